"""The cluster suite needs a second machine: ``TCPS_CLUSTER_PEER=root@ADDRESS`` names it
(scripts/vm-test.sh --cluster boots two VMs and sets it in the first). Without it, nothing
here is collected: on one machine it would have nothing to test."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("TCPS_CLUSTER_PEER") else ["test_*.py"]
