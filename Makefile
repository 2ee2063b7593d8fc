# Quick start (as root on Debian 12):  make demo   |   make test
PY := .venv/bin/python

.PHONY: setup demo test bench clean
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m testbed run quick

test: setup
	$(PY) -m pytest -q --durations=15

bench: setup
	$(PY) -m bench

clean:
	$(PY) -m testbed clean
