"""Load generation for the testbed: Locust users (static, dynamic, mixed), an open-loop
scheduler with a lean hot path (``engine``), and offered-load sweeps (``sweep``) driven
through Locust's master/worker runners. See docs/loadgen.md."""
