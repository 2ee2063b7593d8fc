#!/usr/bin/env bash
# Inside a VM of scripts/vm-test.sh (started by tcps-vm-smoke.service), by the role its
# image was made for (/etc/tcps-vm-role):
#   smoke       the smoke suite (tests/vm)
#   controller  --cluster's first VM: 10.99.0.1 on the wire, the cluster suite (tests/cluster)
#               with the second VM as its peer
#   peer        --cluster's second VM: 10.99.0.2 on the wire, sshd, nothing else; the suite
#               powers it off at its end
# A suite ends with one line that scripts/vm-test.sh looks for on the serial console.
set -uo pipefail
cd /opt/tcps || { echo "TCPS-VM-RESULT: FAIL (no /opt/tcps)"; exit 1; }
role=$(cat /etc/tcps-vm-role 2>/dev/null || echo smoke)
echo "tcps-vm: $role, kernel $(uname -r), $(nproc) CPUs, cgroup $(stat -fc %T /sys/fs/cgroup)"
echo "tcps-vm: root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "tcps-vm: this suite's cgroup: $(cut -d: -f3 /proc/self/cgroup)"

wire() {  # wire ADDRESS: the VM's one network interface (qemu's socket wire), up with ADDRESS
    local nic="" dev
    for dev in /sys/class/net/*; do
        [ "${dev##*/}" != lo ] && { nic=${dev##*/}; break; }
    done
    ip addr add "$1/24" dev "$nic" && ip link set "$nic" up
    echo "tcps-vm: $nic is $1/24"
}

# more pytest arguments, as scripts/vm-test.sh was given them (TCPS_VM_PYTEST_ARGS)
read -r -a extra < /etc/tcps-vm-pytest-args 2>/dev/null || extra=()
status=0
case "$role" in
    peer)
        wire 10.99.0.2
        # a user who is not root, for the suite's refusal of a machine reached without root
        id tcpsuser >/dev/null 2>&1 || useradd -m tcpsuser
        install -d -m 700 -o tcpsuser /home/tcpsuser/.ssh
        install -m 600 -o tcpsuser /root/.ssh/authorized_keys /home/tcpsuser/.ssh/authorized_keys
        systemctl start ssh
        echo "tcps-vm: peer ready"
        exec sleep infinity ;;
    controller)
        wire 10.99.0.1
        for _ in $(seq 1 120); do   # the peer boots beside us, as slowly
            ssh -o BatchMode=yes -o ConnectTimeout=5 root@10.99.0.2 true 2>/dev/null && break
            sleep 5
        done
        echo "tcps-vm: peer answers: $(ssh -o BatchMode=yes root@10.99.0.2 hostname 2>&1)"
        TCPS_CLUSTER_PEER=root@10.99.0.2 TCPS_CLUSTER_POWEROFF=1 \
            .venv/bin/python -m pytest -p no:cacheprovider --color=no -v -rA tests/cluster "${extra[@]}" || status=$? ;;
    *)
        export TCPS_VM_SMOKE=1
        .venv/bin/python -m pytest -p no:cacheprovider --color=no -v -rA tests/vm "${extra[@]}" || status=$? ;;
esac
if [ "$status" -eq 0 ]; then
    echo "TCPS-VM-RESULT: PASS"
else
    echo "TCPS-VM-RESULT: FAIL (pytest exit $status)"
fi
