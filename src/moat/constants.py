"""Every name moat writes into the world — files, labels, variables, image tags — defined once."""

from __future__ import annotations

# Config files, in order of preference (agent.yaml is the Go tool's older name).
CONFIG_FILENAMES = ("moat.yaml", "agent.yaml")

# Environment variables moat reads.
ENV_HOME = "MOAT_HOME"  # where runs and caches live (default ~/.moat)
ENV_RUNTIME = "MOAT_RUNTIME"  # default runtime when neither --runtime nor moat.yaml says
RUNTIMES = ("docker", "sandbox", "kubernetes")

# Variables moat gives the agent.
AGENT_ENV_PREFIX = "MOAT_"
AGENT_ENV_RUN_ID = "MOAT_RUN_ID"
AGENT_ENV_RUN_NAME = "MOAT_RUN_NAME"

# The run store: MOAT_HOME/runs/<run-id>/…
RUNS_DIR = "runs"
NETWORK_TRACE = "network.jsonl"  # every request the run made through the proxy

# Image tags and names.
AGENT_IMAGE_REPO = "moat/run"
RUN_ID_PREFIX = "run_"
NETWORK_PREFIX = "moat-"
CONTAINER_PREFIX = "moat-"

# Inside the agent container.
WORKSPACE_MOUNT = "/workspace"
AGENT_USER = "moatuser"
AGENT_HOME = "/home/moatuser"

# Labels on every engine object moat creates (reserved namespace ``moat.``).
LABEL_RUN_ID = "moat.run-id"
LABEL_ROLE = "moat.role"
LABEL_SERVICE = "moat.service"
LABEL_OWNER_PID = "moat.owner-pid"  # the moat process that created it (orphan detection)
LABEL_OWNER_HOST = "moat.owner-host"
LABEL_OWNER_START = "moat.owner-start"  # the owner's start time: a reused pid is not the owner
LABEL_HOME = "moat.home"  # which MOAT_HOME the run belongs to (a hash of its path)
LABEL_WORKSPACE_OF = "moat.workspace-of"  # a volume workspace: the run whose it is (kept until destroy)
LABEL_VOLUME = "moat.volume"  # a volume kept across runs (volumes: type: volume): "<run name>/<volume>"
ROLE_AGENT = "agent"
ROLE_SERVICE = "service"
ROLE_NETWORK = "network"
ROLE_IMAGE = "image"
ROLE_RELAY = "relay"
ROLE_HOLDER = "holder"  # a strict Docker run's pod: holds its network namespace (loopback only) and the relay
# moat's shared proxy: MOAT_HOME/proxy/, its public socket for runs in namespaces of their own, alone
# in a directory of its own (mounted into a pod's holder: a restarted daemon's new socket is seen too).
PROXY_DIR = "proxy"
PROXY_RELAY_DIR = "relay"
PROXY_SOCKET = "proxy.sock"
AGENT_CONTAINER_PREFIX = "moat-agent-"

MASK = "****"

WORKSPACE_VOLUME_PREFIX = "moat-ws-"  # + run id: a volume workspace (workspace.mode: volume)
