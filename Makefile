# Quick start (as root on Debian 12):  make demo   |   make test
PY := .venv/bin/python

.PHONY: setup demo test vm-test cluster-test bench clean
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m testbed run quick

test: setup
	$(PY) -m pytest -q --durations=25

# cgroup v2 and netem in a Debian 12 VM under qemu (software emulation; measured on 2 cores:
# 10 minutes the first time, 7 once its root file system is cached in /var/cache/tcps-vm)
vm-test:
	bash scripts/vm-test.sh

# nodes on two machines: two such VMs joined by a virtual wire, the host on the second
# (tests/cluster/; docs/cluster.md); measured: 19 minutes once the image is cached
cluster-test:
	bash scripts/vm-test.sh --cluster

bench: setup
	$(PY) -m bench

clean:
	$(PY) -m testbed clean
