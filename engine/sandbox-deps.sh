#!/usr/bin/env bash
# engine/sandbox-deps.sh - the host programs moat's sandbox runtime uses, from Debian's packages.
#
# bubblewrap (every sandbox process's namespaces), util-linux (nsenter, to join them), and the servers
# and clients the sandbox starts services from: postgresql, mariadb-server, redis-server (their clients
# come with them). coreutils' env (--ignore-signal, 8.31+) is Debian's own. Idempotent: packages that
# are already installed are skipped. The packages' own services are kept from starting (moat starts
# the servers itself, per run, as the agent's user, in a private network namespace). Memory and CPU
# limits need no package: moat creates cgroups when it runs as root, and says so when it cannot.
set -euo pipefail

PACKAGES=(bubblewrap util-linux postgresql mariadb-server redis-server)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "sandbox: host packages present (${PACKAGES[*]})"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "sandbox: need root to install: ${missing[*]}" >&2; exit 1; }
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
echo "sandbox: installing ${missing[*]}"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/var/log/moat-sandbox-apt.log 2>&1; then
    apt-get update -q >>/var/log/moat-sandbox-apt.log 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>/var/log/moat-sandbox-apt.log 2>&1 || {
        tail -n 30 /var/log/moat-sandbox-apt.log >&2
        echo "sandbox: installing ${missing[*]} failed" >&2
        exit 1
    }
fi
echo "sandbox: installed in $(( $(date +%s) - start ))s"
