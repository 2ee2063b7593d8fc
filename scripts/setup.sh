#!/usr/bin/env bash
# Install everything the testbed needs on a fresh Debian 12 machine (or the Vagrant VM):
# Debian packages for the kernel tools and comparison programs, then a virtual
# environment in .venv with the Python dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo $0): it installs Debian packages" >&2
    exit 1
fi

APT_PACKAGES=(
    python3 python3-venv python3-dev         # the venv, and Python's headers for compiled parts
    build-essential                         # gcc and libc headers: the engine's native path (_native.c)
    iproute2 nftables ethtool procps curl   # namespaces, NAT for pass-through, offload flags, probes
    tcpdump                                 # `testbed capture`
    strace                                  # a test traces the TCP server's zero-copy sends
    openssh-client                          # nodes on other machines (docs/cluster.md)
    mininet bridge-utils iputils-ping       # the Mininet backend, without Open vSwitch
    haproxy httperf nginx-light             # the comparison points of the benchmarks
    chromium                                # opening reports in a real browser in tests
    shellcheck ruby                         # checking the Vagrant provisioning path
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's packages start these services; the testbed starts its own copies inside nodes.
for svc in nginx haproxy; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl disable --now -q "$svc" || true
    fi
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# the engine's native fast path, built in place beside its Python twin (optional: without
# it the pure-Python path runs; TCPS_NATIVE=0 forces that one)
.venv/bin/python setup.py -q build_ext --inplace 2>/dev/null \
    || echo "setup.sh: the native fast path did not build; the engine runs its pure-Python path" >&2

# Debian's mininet lives in the system's dist-packages (PyPI's lacks mnexec): expose only
# that package to the venv, not the rest of the system's Python packages.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/mininet ]; then
    mkdir -p .venv/mininet-only
    ln -sfn /usr/lib/python3/dist-packages/mininet .venv/mininet-only/mininet
    echo "$(pwd)/.venv/mininet-only" > "$site/debian-mininet.pth"
fi
# the commands on root's PATH (sudo's secure_path holds /usr/local/bin): `sudo testbed up`
for cmd in testbed testbed-loadgen testbed-analysis; do
    ln -sfn "$(pwd)/.venv/bin/$cmd" "/usr/local/bin/$cmd"
done
echo "setup.sh: ready (.venv; commands testbed, testbed-loadgen, testbed-analysis in /usr/local/bin)"
