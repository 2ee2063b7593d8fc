#!/usr/bin/env bash
# The testbed on the machines most users have: a Debian 12 VM (cgroup v2 under systemd,
# a kernel with netem), built from Debian's packages, booted under qemu's software
# emulation (no KVM needed, no network device), running the smoke suite (tests/vm/).
#
#   bash scripts/vm-test.sh             # as root; refuses if qemu/debootstrap/mkfs.ext4 are missing
#   bash scripts/vm-test.sh --install   # apt-get installs them first (CI)
#   bash scripts/vm-test.sh --cluster   # two VMs joined by a virtual wire: the cluster suite
#                                       # (tests/cluster/), the host on the second VM (make cluster-test)
#
# The root file system (debootstrap, Debian's kernel, scripts/setup.sh run in a chroot) is
# cached in $TCPS_VM_CACHE (default /var/cache/tcps-vm), keyed by a hash of what shapes it:
# scripts/setup.sh, pyproject.toml, scripts/vm/provision.sh and the debootstrap recipe below.
# Each run copies the working tree's tracked files (git ls-files) into it, makes an ext4
# image from it with mkfs.ext4 -d (no loop mount), boots it, and reads the result from the
# serial console. Everything else it makes is removed by exact name on exit.
{  # parsed whole before it runs: editing this file during a run cannot change that run
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL=0
CLUSTER=0
for arg in "$@"; do
    case "$arg" in
        --install) INSTALL=1 ;;
        --cluster) CLUSTER=1 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm-test.sh: unknown argument $arg (--install, --cluster)" >&2; exit 2 ;;
    esac
done

# command:the Debian package that provides it, in the order a refusal names them
NEEDS=(qemu-system-x86_64:qemu-system-x86 debootstrap:debootstrap mkfs.ext4:e2fsprogs)
[ "$CLUSTER" -eq 1 ] && NEEDS+=(ssh-keygen:openssh-client)
missing=()
for need in "${NEEDS[@]}"; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$INSTALL" -eq 0 ]; then
        echo "vm-test.sh: missing ${missing[*]}: apt-get install ${missing[*]} (or run with --install)" >&2
        exit 2
    fi
    echo "vm-test.sh: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "vm-test.sh: run as root (debootstrap and chroot need it)" >&2
    exit 2
fi

SUITE=bookworm
apt_mirror() {  # the Debian archive this machine's apt already uses (deb822 or one-line sources)
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk '/^URIs:/ {print $2; exit}' "$f" | grep -v -- '-security' && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ {print $2; exit}' "$f" | grep . && return 0
    done
    return 1
}
MIRROR=${TCPS_VM_MIRROR:-$(apt_mirror | head -1 || true)}
if [ -z "$MIRROR" ]; then
    echo "vm-test.sh: no Debian archive in /etc/apt/sources*: set TCPS_VM_MIRROR to one" >&2
    exit 2
fi
INCLUDE=systemd-sysv,udev,kmod,ca-certificates,initramfs-tools,iproute2,procps
RECIPE="debootstrap --variant=minbase --include=$INCLUDE $SUITE $MIRROR"
CACHE=${TCPS_VM_CACHE:-/var/cache/tcps-vm}
TIME_LIMIT_S=${TCPS_VM_TIME_LIMIT_S:-$([ "$CLUSTER" -eq 1 ] && echo 2700 || echo 1500)}  # boot and suite
BUILD_LIMIT_S=${TCPS_VM_BUILD_LIMIT_S:-1500}       # each of debootstrap and provisioning
IMAGE_SIZE=${TCPS_VM_IMAGE_SIZE:-8G}

key=$( { echo "$RECIPE"; cat scripts/setup.sh pyproject.toml scripts/vm/provision.sh; } | sha256sum | cut -c1-16)
ROOTFS=$CACHE/rootfs-$key
PARTIAL=$CACHE/rootfs-$key.partial
RUN=$CACHE/run-$$            # this run's image and serial log

T0=$(date +%s)
phase_start=$T0
TICKER=
phase() {  # end the previous phase (printing its time), start the next with a progress ticker
    local now; now=$(date +%s)
    if [ -n "$TICKER" ]; then
        kill "$TICKER" 2>/dev/null || true
        wait "$TICKER" 2>/dev/null || true
        TICKER=
    fi
    [ -n "${PHASE:-}" ] && printf 'vm-test.sh: %-10s %4ds\n' "$PHASE" "$((now - phase_start))"
    PHASE=$1; phase_start=$now
    if [ -n "$PHASE" ]; then
        echo "vm-test.sh: $PHASE ..."
        # 9>&-: the ticker (and its sleep, which outlives a kill of the ticker by up to a
        # minute) must not hold the cache's lock: the next run would find it taken
        (t=0; while sleep 60; do t=$((t + 60)); echo "vm-test.sh: $1 still running, ${t}s"; done) 9>&- &
        TICKER=$!
    fi
    return 0
}

BUILDING=0  # 1 while this run builds $PARTIAL (only then is it ours to remove)
MOUNTS=()   # exact paths we mounted, unmounted in reverse order whatever happens
QEMU_PID=
PEER_PID=   # --cluster: the second VM
# --cluster writes these into the cached root file system for the images only: removed after
KEYED=(root/.ssh/authorized_keys root/.ssh/id_ed25519 root/.ssh/id_ed25519.pub root/.ssh/config etc/tcps-vm-role
       etc/tcps-vm-pytest-args)
cleanup() {
    local rc=$?
    set +e   # every step below runs, whatever the one before it did
    [ -n "$TICKER" ] && kill "$TICKER" 2>/dev/null
    for pid in $QEMU_PID $PEER_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    for f in "${KEYED[@]}"; do [ -d "$ROOTFS" ] && rm -f -- "$ROOTFS/$f"; done
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    [ -d "$RUN" ] && rm -rf -- "$RUN"
    # a failed build is not a cache: its partial root is removed
    [ "$BUILDING" -eq 1 ] && [ -d "$PARTIAL" ] && rm -rf --one-file-system -- "$PARTIAL"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_in() {  # mount_in TARGET ARGS...: mount and remember TARGET
    local target=$1; shift
    mount "$@" "$target"
    MOUNTS+=("$target")
}

chroot_run() {  # chroot_run ROOT CMD...: with proc, sys, dev mounted for the command only
    local root=$1; shift
    local n=${#MOUNTS[@]}
    mount_in "$root/proc" -t proc proc
    mount_in "$root/sys" -t sysfs sysfs
    mount_in "$root/dev" --bind /dev
    mount_in "$root/dev/pts" -t devpts devpts
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    local rc=0
    # a clean environment: the host's pip settings (local wheel folders, CA paths) are not
    # the chroot's; proxies, where the host has them, are the way out for both
    local -a envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
                   LANG=C.UTF-8 TERM=dumb)
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
        [ -n "${!v:-}" ] && envs+=("$v=${!v}")
    done
    # --foreground: the command stays in our process group, so Ctrl-C reaches it
    timeout --foreground --kill-after=10 "$BUILD_LIMIT_S" chroot "$root" env -i "${envs[@]}" "$@" || rc=$?
    [ "$rc" -eq 124 ] && echo "vm-test.sh: $* took over ${BUILD_LIMIT_S}s (TCPS_VM_BUILD_LIMIT_S)" >&2
    for ((i = ${#MOUNTS[@]} - 1; i >= n; i--)); do
        umount "${MOUNTS[$i]}"
        unset 'MOUNTS[i]'
    done
    MOUNTS=("${MOUNTS[@]}")
    return "$rc"
}

copy_project() {  # the working tree's tracked files into ROOT/opt/tcps (its .venv stays)
    local dest=$1/opt/tcps
    mkdir -p "$dest"
    find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf -- {} +
    git ls-files -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$dest"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"   # one run at a time per cache: they would share the root file system
if ! flock -n 9; then
    echo "vm-test.sh: another vm-test.sh is using $CACHE; wait for it or set TCPS_VM_CACHE" >&2
    exit 2
fi
if [ -d "$ROOTFS" ]; then
    echo "vm-test.sh: root file system cached: $ROOTFS"
else
    # roots of other keys (outdated) and unfinished ones are ours: removed by their exact names
    for old in "$CACHE"/rootfs-*; do
        [ -e "$old" ] || continue
        echo "vm-test.sh: removing $old (outdated or unfinished)"
        rm -rf --one-file-system -- "$old"
    done
    phase debootstrap
    BUILDING=1
    [ -d "$PARTIAL" ] && rm -rf --one-file-system -- "$PARTIAL"   # a killed run's, ours by name
    timeout --foreground --kill-after=10 "$BUILD_LIMIT_S" debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$PARTIAL" "$MIRROR" \
        > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    phase provision
    copy_project "$PARTIAL"
    # the site's own certificate authorities (Debian's place for them), for provisioning
    # only: a TLS-inspecting proxy between this machine and PyPI is then trusted there too
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$PARTIAL/usr/local/share/ca-certificates/host"
        cp /usr/local/share/ca-certificates/*.crt "$PARTIAL/usr/local/share/ca-certificates/host/"
    fi
    chroot_run "$PARTIAL" bash /opt/tcps/scripts/vm/provision.sh
    mv "$PARTIAL" "$ROOTFS"
    BUILDING=0
fi

phase image
mkdir -p "$RUN"
copy_project "$ROOTFS"
install -m 644 scripts/vm/tcps-vm-smoke.service "$ROOTFS/etc/systemd/system/tcps-vm-smoke.service"
ln -sfn /etc/systemd/system/tcps-vm-smoke.service \
    "$ROOTFS/etc/systemd/system/multi-user.target.wants/tcps-vm-smoke.service"
# no login prompt on the serial console: its getty would hang up the suite's output there
ln -sfn /dev/null "$ROOTFS/etc/systemd/system/serial-getty@ttyS0.service"
image() {  # image ROLE FILE: the root file system as an ext4 image for one VM
    echo "$1" > "$ROOTFS/etc/tcps-vm-role"
    printf '%s\n' "${TCPS_VM_PYTEST_ARGS:-}" > "$ROOTFS/etc/tcps-vm-pytest-args"
    # each VM its own identity: the testbed tells two machines apart by it
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$ROOTFS/etc/machine-id"
    truncate -s "$IMAGE_SIZE" "$2"
    mkfs.ext4 -q -F -L tcps-vm -d "$ROOTFS" "$2"
}
if [ "$CLUSTER" -eq 1 ]; then
    # a key made for this run: the first VM logs into the second with it, as root
    ssh-keygen -q -t ed25519 -N '' -C tcps-vm-cluster -f "$RUN/id_ed25519"
    install -d -m 700 "$ROOTFS/root/.ssh"
    install -m 600 "$RUN/id_ed25519" "$ROOTFS/root/.ssh/id_ed25519"
    install -m 644 "$RUN/id_ed25519.pub" "$ROOTFS/root/.ssh/id_ed25519.pub"
    install -m 600 "$RUN/id_ed25519.pub" "$ROOTFS/root/.ssh/authorized_keys"
    # the peer's host key is new at every boot of a new image: nothing to verify it against
    printf 'Host 10.99.0.*\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n' \
        > "$ROOTFS/root/.ssh/config"
    image controller "$RUN/disk.img"
    image peer "$RUN/peer.img"
else
    image smoke "$RUN/disk.img"
fi
for f in "${KEYED[@]}"; do rm -f -- "$ROOTFS/$f"; done
kernel=$(ls "$ROOTFS"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$ROOTFS"/boot/initrd.img-* | sort -V | tail -1)

phase boot+suite
# -cpu max: the default qemu64 model lacks SSE4.2 and AVX, which PyPI's wheels (pandas,
# pyarrow) use: the load generator died of SIGILL under it
boot() {  # boot IMAGE SERIAL-LOG NETWORK-ARGS...: one VM in the background
    local disk=$1 log=$2; shift 2
    qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G -nographic -no-reboot \
        -kernel "$kernel" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 quiet systemd.show_status=0" \
        -drive "file=$disk,format=raw,if=virtio" "$@" \
        > "$log" 2>&1 < /dev/null 9>&- &
}
if [ "$CLUSTER" -eq 1 ]; then
    # the wire between the two VMs: qemu's socket network over this machine's loopback
    # (the first VM listens, the second connects); nothing else is on it
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    boot "$RUN/disk.img" "$RUN/serial.log" -nic none \
        -netdev "socket,id=wire,listen=127.0.0.1:$port" -device virtio-net-pci,netdev=wire,mac=52:54:00:99:00:01
    QEMU_PID=$!
    sleep 2
    boot "$RUN/peer.img" "$RUN/peer-serial.log" -nic none \
        -netdev "socket,id=wire,connect=127.0.0.1:$port" -device virtio-net-pci,netdev=wire,mac=52:54:00:99:00:02
    PEER_PID=$!
else
    boot "$RUN/disk.img" "$RUN/serial.log" -nic none
    QEMU_PID=$!
fi
shown=0
deadline=$(( $(date +%s) + TIME_LIMIT_S ))
while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "vm-test.sh: the VM did not finish within ${TIME_LIMIT_S}s; its console so far:" >&2
        tail -40 "$RUN/serial.log" >&2
        exit 1
    fi
    sleep 5
    # progress: the suite's lines as they come (tcps-vm: and pytest's PASSED/FAILED lines)
    lines=$(wc -l < "$RUN/serial.log")
    if [ "$lines" -gt "$shown" ]; then
        sed -n "$((shown + 1)),${lines}p" "$RUN/serial.log" | tr -d '\r' \
            | grep -aE '^(tcps-vm|TCPS-VM|=====)|PASSED|FAILED|ERROR|SKIPPED' || true
        shown=$lines
    fi
done
wait "$QEMU_PID" || true
QEMU_PID=
phase ""
cp "$RUN/serial.log" "$CACHE/last-serial.log"
[ -f "$RUN/peer-serial.log" ] && cp "$RUN/peer-serial.log" "$CACHE/last-peer-serial.log"
result=$(tr -d '\r' < "$RUN/serial.log" | grep -a '^TCPS-VM-RESULT:' | tail -1 || true)
echo "vm-test.sh: total $(( $(date +%s) - T0 ))s; serial log kept in $CACHE/last-serial.log"
case "$result" in
    "TCPS-VM-RESULT: PASS") echo "vm-test.sh: $result"; exit 0 ;;
    "") echo "vm-test.sh: no result line on the serial console (see $CACHE/last-serial.log)" >&2; exit 1 ;;
    *) tr -d '\r' < "$RUN/serial.log" | sed -n '/short test summary/,$p' >&2
       echo "vm-test.sh: $result" >&2; exit 1 ;;
esac
}
