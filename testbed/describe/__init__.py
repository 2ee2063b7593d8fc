"""What a testbed and an experiment are, as frozen, checked values: topologies, experiments,
service options, fidelity settings, names. No I/O beyond reading the files they come from."""
