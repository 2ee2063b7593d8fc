"""`python -m bench`: every benchmark in turn; each prints ratios measured side by side."""

import importlib
import sys

BENCHMARKS = ("bench.build", "bench.offload", "bench.channels", "bench.san", "bench.fileserver", "bench.zerocopy",
              "bench.loadgen")

for name in BENCHMARKS:
    print(f"\n=== {name} ===", flush=True)
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        print(f"(not available: {e})")
        continue
    module.main([])
sys.exit(0)
