# moat — the two commands a new machine needs: `make demo` and `make test`.
# Both install what they need (a virtualenv with moat and its tools; Debian's Docker engine and the
# locally built images when no engine answers) and are safe to run again.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= /tmp/moat-demo

.PHONY: podman install engine sandbox test unit lint demo bench clean-engine help catalog

help:
	@echo "make demo    run the multi-service example for real (postgres + mysql + redis)"
	@echo "make test    lint, type-check, and run unit, integration and end-to-end tests"
	@echo "make unit    unit tests only (no engine)"
	@echo "make engine  start a local Docker engine if none answers and build the test images"
	@echo "make sandbox install the host programs the sandbox runtime uses (bubblewrap, postgres, mariadb, redis)"
	@echo "make bench   start-up benchmarks: moat against docker-compose, testcontainers and the floor; sandbox against docker"

# The virtualenv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The credential proxy runs mitmproxy in a virtualenv of its own (.venv/proxy): mitmproxy 11 pins
# ruamel.yaml, h11 and cryptography below what moat itself uses. moat finds it beside its own.
# cel-python evaluates claude.llm-gateway's Keep rules (their CEL expressions) there.
PROXY_STAMP := $(VENV)/proxy/.installed-stamp
$(PROXY_STAMP): pyproject.toml $(STAMP)
	$(PYTHON) -m venv $(VENV)/proxy
	$(VENV)/proxy/bin/pip install --quiet --disable-pip-version-check 'mitmproxy==11.0.2' 'cel-python>=0.5'
	$(VENV)/proxy/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(PROXY_STAMP)

install: $(STAMP) $(PROXY_STAMP)

engine:
	bash engine/ensure.sh

# catalog.json is catalog.yaml compiled (read at each start in ~2 ms; the YAML takes ~55): after an
# edit of the YAML, write it again (a unit test fails until then; moat reads the YAML meanwhile).
catalog: $(STAMP)
	$(BIN)/python -m moat.catalog

# Host programs for the sandbox runtime (bubblewrap; postgres, mariadb and redis servers).
sandbox:
	bash engine/sandbox-deps.sh

# podman: `podman kube play` stands in for a cluster in the Kubernetes runtime's end-to-end tests.
podman:
	bash engine/podman.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

test: install engine sandbox podman lint
	$(BIN)/pytest tests -q

# With an engine, the demo runs in containers (on the locally built images); where none can be
# started, moat chooses its sandbox runtime by itself and runs the same example from host programs.
demo: install sandbox
	bash engine/ensure.sh || echo "demo: no container engine could be started; moat will use its sandbox"
	$(BIN)/python engine/localize.py examples/multi-service $(DEMO_DIR)
	$(BIN)/moat run $(DEMO_DIR)

# Peers (docker-compose 1.29.2, testcontainers) go into their own virtualenvs under benchmarks/.peers.
bench: install engine sandbox
	bash benchmarks/peers.sh
	$(BIN)/python benchmarks/startup.py --json benchmarks/last-startup.json
	$(BIN)/python benchmarks/runtimes.py --json benchmarks/last-runtimes.json
	$(BIN)/python benchmarks/proxy.py --json benchmarks/last-proxy.json
	$(BIN)/python benchmarks/pod_start.py --json benchmarks/last-pod-start.json
	$(BIN)/python benchmarks/image_build.py --json benchmarks/last-image-build.json

clean-engine:
	bash engine/stop.sh
