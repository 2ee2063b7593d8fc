import json, statistics, glob
rows = {}
for i in (1, 2, 3):
    b = json.load(open(f"/work/bench/ab-before-{i}.json")); a = json.load(open(f"/work/bench/ab-main-{i}.json"))
    for mode in b["modes"]:
        for node in ("host1", "tcpserver"):
            rb = b["modes"][mode]["rounds"][0]["3000"][f"{node}_us_per_req"]
            ra = a["modes"][mode]["rounds"][0]["3000"][f"{node}_us_per_req"]
            if rb > 1:
                rows.setdefault((mode, node), []).append((rb, ra, ra / rb))
print("CPU per request at 3,000 req/s, 6 KiB, new connection each (us); after/before pair by pair, 3 pairs")
for (mode, node), v in rows.items():
    r = [x[2] for x in v]
    print(f"{mode:14} {node:10} before {statistics.median(x[0] for x in v):6.0f}  after {statistics.median(x[1] for x in v):6.0f}"
          f"  after/before {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}]")
