#!/usr/bin/env bash
# engine/podman.sh - podman for the Kubernetes runtime's end-to-end tests (`podman kube play` stands
# in for a cluster). Debian's podman 4.3 with runc (crun fails on these machines' cgroup layout) and
# the ulimits this VM allows. Idempotent; called by `make test`.
set -Eeuo pipefail
if ! command -v podman >/dev/null || ! command -v catatonit >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman catatonit runc >/var/log/moat-podman-apt.log 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman catatonit runc \
            >>/var/log/moat-podman-apt.log 2>&1; } || { echo "podman: install failed (see /var/log/moat-podman-apt.log)" >&2; exit 1; }
fi
conf=/etc/containers/containers.conf
if [ ! -s "$conf" ]; then
    mkdir -p /etc/containers
    cat > "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
exit_command_delay = 10
CONF
fi
podman info --format '{{.Version.Version}}' >/dev/null
echo "podman: $(podman --version)"
