"""Nodes on other machines: ssh.py reaches a machine (one multiplexed SSH connection) and
runs agent.py there, which builds and runs that machine's share of a testbed."""
