"""One row per step from the per-request arrays of all processes (pure numpy; no I/O).

The measured window is [t_start, t_end): the step's start plus the warm-up, to its end.
A request belongs to the window by its *intended* time; rates count events (sends,
replies) whose own time falls inside the window.

Each step is classified by what limited it (the reasons are recorded beside the flags):

- ``generator_bound``: the generator itself limited the offered load: it fell behind its
  schedule (sends under 98% of scheduled, or a p99 send lag over ``BOUND_LAG_MS``), its
  CPU was spent (one process over 90% of a core, or the processes sharing one CPU set
  over 90% of that set's capacity, cgroup quota included), or its own resources ran out
  (in-flight capacity, local ports, descriptors). A request the server never answered is
  *not* the generator's fault: it times out, as a real client's would.
- ``saturated``: past the knee: replies under 95% of offered, errors over 1% of the
  window's requests, or p99 latency over the latency target. These steps are the
  server's answer and stay in every table and figure.

Latency percentiles (``lat_*``) count every request intended in the window that ended,
failed and timed-out ones at their time of failure (a client waits that long too);
``lat_ok_*`` count successful replies only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .engine import ERR, ERROR_KINDS

ERR_OVERFLOW = ERR["overflow"]

PERCENTILES = (50, 90, 99, 99.9)
ERROR_COLUMNS = [f"err_{k}" for k in ERROR_KINDS[1:]] + ["err_http"]
BOUND_SEND_RATIO = 0.98
BOUND_CPU = 0.90
BOUND_LAG_MS = 100.0        # p99 send lag: the generator's own queueing, not the server's
SATURATED_REPLY_RATIO = 0.95
SATURATED_ERROR_SHARE = 0.01
DEFAULT_LATENCY_TARGET_MS = 200.0
#: errors that name the generator's own resources, not the server
GENERATOR_ERRORS = ("overflow", "addr_unavailable", "too_many_files", "unsent")


def _pct_name(p: float) -> str:
    return f"p{p:g}".replace(".", "")


LATENCY_COLUMNS = ([f"lat_{_pct_name(p)}_ms" for p in PERCENTILES] + ["lat_mean_ms", "lat_max_ms"]
                   + [f"lat_ok_{_pct_name(p)}_ms" for p in PERCENTILES]
                   + [f"lat_sent_{_pct_name(p)}_ms" for p in PERCENTILES] + ["lat_sent_mean_ms"])

STEP_COLUMNS = (
    ["step", "offered_rate", "scheduled_rate", "achieved_rate", "send_ratio", "t_start", "t_end",
     "window_s", "intended", "sent", "replies", "reply_rate_min", "reply_rate_avg", "reply_rate_max",
     "reply_rate_stddev", "reply_bytes_per_s", "errors_total"] + ERROR_COLUMNS
    + ["overflow"] + LATENCY_COLUMNS
    + ["send_lag_p99_ms", "send_lag_max_ms", "gen_cpu_max", "gen_cpu_total", "gen_cpu_share_max",
       "processes", "max_inflight", "inflight_max", "connections_opened", "tcp_tw_max", "tcp_inuse_max",
       "latency_target_ms", "generator_bound", "bound_reasons", "saturated", "saturated_reasons"]
)


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 3) if math.isfinite(x) else float("nan")


def summarize(step: int, offered: float, t_start: float, t_end: float, a: dict[str, np.ndarray],
              workers: list[dict[str, Any]], latency_target_ms: float = DEFAULT_LATENCY_TARGET_MS,
              max_inflight: int | None = None) -> dict[str, Any]:
    """The steps.csv row for one step. ``a`` holds the concatenated arrays of all processes
    (epoch seconds); ``workers`` what each process measured of itself (``cpu_frac``, and
    ``cpu_group``/``cpu_capacity``: which CPU set it shares and how many cores that set has)."""
    window = t_end - t_start
    intended, sent, done, status, err = a["intended"], a["sent"], a["done"], a["status"], a["error"]
    inwin = (intended >= t_start) & (intended < t_end)
    n_int = int(inwin.sum())
    with np.errstate(invalid="ignore"):
        sent_inwin = (sent >= t_start) & (sent < t_end)
        ok = (err == 0) & (status > 0) & (status < 400)
        done_inwin = (done >= t_start) & (done < t_end)
    n_sent = int(sent_inwin.sum())
    row: dict[str, Any] = {
        "step": step, "offered_rate": offered, "scheduled_rate": round(n_int / window, 3),
        "achieved_rate": round(n_sent / window, 3),
        "send_ratio": round(n_sent / n_int, 5) if n_int else float("nan"),
        "t_start": round(t_start, 6), "t_end": round(t_end, 6), "window_s": round(window, 6),
        "intended": n_int, "sent": int((inwin & np.isfinite(sent)).sum()),
    }
    # replies completed inside the window, in 1 s samples (whole seconds only)
    rep = ok & done_inwin
    row["replies"] = int((ok & inwin).sum())
    nbins = max(int(math.floor(window + 1e-9)), 1)
    bins = np.floor(done[rep] - t_start).astype(np.int64)
    counts = np.bincount(bins[bins < nbins], minlength=nbins)[:nbins].astype(float)
    if window < 1.0:
        counts = counts / window
    row.update(reply_rate_min=float(counts.min()), reply_rate_avg=round(float(counts.mean()), 3),
               reply_rate_max=float(counts.max()), reply_rate_stddev=round(float(counts.std()), 3),
               reply_bytes_per_s=round(float(a["nbytes"][rep].sum()) / window, 1))
    # errors of the requests intended in the window
    e_in = err[inwin]
    total = 0
    for k, name in enumerate(ERROR_KINDS):
        if k == 0:
            continue
        c = int((e_in == k).sum())
        row[f"err_{name}"] = c
        total += c
    http = int((inwin & (err == 0) & (status >= 400)).sum())
    row["err_http"] = http
    row["errors_total"] = total + http
    row["overflow"] = row["err_overflow"]
    # latency from the intended instant of every request that ended (failures at their time of
    # failure: the client waited that long); overflowed requests were never sent (the
    # generator's failure, flagged below) and stay out
    with np.errstate(invalid="ignore"):
        ended = inwin & np.isfinite(done) & (err != ERR_OVERFLOW)
    good = ok & inwin
    lat_all = done[ended] - intended[ended]
    lat_ok = done[good] - intended[good]
    lat_s = done[good] - sent[good]
    for p in PERCENTILES:
        name = _pct_name(p)
        row[f"lat_{name}_ms"] = _ms(np.percentile(lat_all, p)) if len(lat_all) else float("nan")
        row[f"lat_ok_{name}_ms"] = _ms(np.percentile(lat_ok, p)) if len(lat_ok) else float("nan")
        row[f"lat_sent_{name}_ms"] = _ms(np.percentile(lat_s, p)) if len(lat_s) else float("nan")
    row["lat_mean_ms"] = _ms(lat_all.mean()) if len(lat_all) else float("nan")
    row["lat_max_ms"] = _ms(lat_all.max()) if len(lat_all) else float("nan")
    row["lat_sent_mean_ms"] = _ms(lat_s.mean()) if len(lat_s) else float("nan")
    s_ok = inwin & np.isfinite(sent)
    lag = sent[s_ok] - intended[s_ok]
    row["send_lag_p99_ms"] = _ms(np.percentile(lag, 99)) if len(lag) else float("nan")
    row["send_lag_max_ms"] = _ms(lag.max()) if len(lag) else float("nan")
    cpus = [w.get("cpu_frac", float("nan")) for w in workers]
    row["gen_cpu_max"] = round(max(cpus), 4) if cpus else float("nan")
    row["gen_cpu_total"] = round(sum(cpus), 4) if cpus else float("nan")
    row["gen_cpu_share_max"] = round(cpu_share_max(workers), 4)
    row["processes"] = len(workers)
    row["max_inflight"] = max_inflight if max_inflight is not None else float("nan")
    row["inflight_max"] = max((w.get("inflight_max", 0) for w in workers), default=0)
    row["latency_target_ms"] = latency_target_ms
    row["connections_opened"] = int(sum(w.get("connections_opened", 0) for w in workers))
    # processes in one namespace see the same counters: take the max, not the sum
    row["tcp_tw_max"] = max((w.get("tcp_tw_max", 0) for w in workers), default=0)
    row["tcp_inuse_max"] = max((w.get("tcp_inuse_max", 0) for w in workers), default=0)
    reasons = bound_reasons(row)
    row["generator_bound"] = bool(reasons)
    row["bound_reasons"] = ";".join(reasons)
    sat = saturated_reasons(row)
    row["saturated"] = bool(sat)
    row["saturated_reasons"] = ";".join(sat)
    return {c: row.get(c) for c in STEP_COLUMNS}


def cpu_share_max(workers: list[dict[str, Any]]) -> float:
    """The busiest CPU set's use against its capacity: processes that share a CPU set (the
    same cgroup and affinity) share its cores, so each alone can stay far below 90% while
    together they have none left."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for w in workers:
        groups.setdefault(str(w.get("cpu_group", w.get("pid", id(w)))), []).append(w)
    shares = []
    for ws in groups.values():
        used = sum(w.get("cpu_frac", float("nan")) for w in ws)
        cap = min((w.get("cpu_capacity") or float("nan") for w in ws), default=float("nan"))
        if cap == cap and cap > 0 and used == used:
            shares.append(used / cap)
    return max(shares) if shares else float("nan")


def bound_reasons(row: dict[str, Any]) -> list[str]:
    """Why the generator, not the server, limited the step's offered load (empty: it did not).

    The send ratio compares sends with the step's own schedule, which for Poisson gaps
    differs from the nominal rate by chance (about 1/sqrt(n)). Overflow means the in-flight
    capacity ran out: the sweep sizes it from rate x timeout, so a server that stops
    answering makes requests time out first."""
    out = []
    if row["intended"] and row["achieved_rate"] < BOUND_SEND_RATIO * row["scheduled_rate"]:
        out.append(f"sent {row['achieved_rate']:.0f}/s < 98% of scheduled {row['scheduled_rate']:.0f}/s")
    lag = row.get("send_lag_p99_ms", float("nan"))
    if lag == lag and lag > BOUND_LAG_MS:
        out.append(f"send lag p99 {lag:.0f} ms > {BOUND_LAG_MS:g} ms")
    if row["gen_cpu_max"] == row["gen_cpu_max"] and row["gen_cpu_max"] > BOUND_CPU:
        out.append(f"generator process CPU {row['gen_cpu_max']:.0%}")
    share = row.get("gen_cpu_share_max", float("nan"))
    if share == share and share > BOUND_CPU:
        out.append(f"generator CPU set {share:.0%} of its capacity")
    for kind in GENERATOR_ERRORS:
        n = row.get(f"err_{kind}", 0)
        if n:
            out.append(f"{n} {kind.replace('_', ' ')}")
    return out


def saturated_reasons(row: dict[str, Any]) -> list[str]:
    """Why the step is past the server's knee (empty: the server kept up)."""
    out = []
    offered, rate = row["offered_rate"], row.get("reply_rate_avg", float("nan"))
    if offered and rate == rate and rate < SATURATED_REPLY_RATIO * offered:
        out.append(f"replies {rate:.0f}/s < 95% of offered {offered:.0f}/s")
    n = row["intended"]
    server_errors = row["errors_total"] - sum(row.get(f"err_{k}", 0) for k in GENERATOR_ERRORS)
    if n and server_errors > SATURATED_ERROR_SHARE * n:
        out.append(f"errors {server_errors / n:.1%} > 1%")
    p99, target = row.get("lat_p99_ms", float("nan")), row.get("latency_target_ms", float("nan"))
    if p99 == p99 and target == target and p99 > target:
        out.append(f"p99 {p99:.0f} ms > target {target:g} ms")
    return out
