"""The VM's smoke suite runs only inside the VM that scripts/vm-test.sh boots, which sets
TCPS_VM_SMOKE: on other machines it would test this machine, not a stock Debian 12."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("TCPS_VM_SMOKE") else ["test_*.py"]
