#!/usr/bin/env bash
# Inside the VM (started by tcps-vm-smoke.service): the smoke suite, then one final line
# that scripts/vm-test.sh looks for on the serial console.
set -uo pipefail
cd /opt/tcps || { echo "TCPS-VM-RESULT: FAIL (no /opt/tcps)"; exit 1; }
echo "tcps-vm: kernel $(uname -r), $(nproc) CPUs, cgroup $(stat -fc %T /sys/fs/cgroup)"
echo "tcps-vm: root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "tcps-vm: this suite's cgroup: $(cut -d: -f3 /proc/self/cgroup)"
export TCPS_VM_SMOKE=1
status=0
.venv/bin/python -m pytest -p no:cacheprovider --color=no -v -rA tests/vm || status=$?
if [ "$status" -eq 0 ]; then
    echo "TCPS-VM-RESULT: PASS"
else
    echo "TCPS-VM-RESULT: FAIL (pytest exit $status)"
fi
