"""One row per step from the per-request arrays of all processes (pure numpy; no I/O).

The measured window is [t_start, t_end): the step's start plus the warm-up, to its end.
A request belongs to the window by its *intended* time; rates count events (sends,
replies) whose own time falls inside the window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .engine import ERROR_KINDS

PERCENTILES = (50, 90, 99, 99.9)
ERROR_COLUMNS = [f"err_{k}" for k in ERROR_KINDS[1:]] + ["err_http"]
BOUND_SEND_RATIO = 0.98
BOUND_CPU = 0.90


def _pct_name(p: float) -> str:
    return f"p{p:g}".replace(".", "")


LATENCY_COLUMNS = ([f"lat_{_pct_name(p)}_ms" for p in PERCENTILES] + ["lat_mean_ms", "lat_max_ms"]
                   + [f"lat_sent_{_pct_name(p)}_ms" for p in PERCENTILES] + ["lat_sent_mean_ms"])

STEP_COLUMNS = (
    ["step", "offered_rate", "scheduled_rate", "achieved_rate", "send_ratio", "t_start", "t_end",
     "window_s", "intended", "sent", "replies", "reply_rate_min", "reply_rate_avg", "reply_rate_max",
     "reply_rate_stddev", "reply_bytes_per_s", "errors_total"] + ERROR_COLUMNS
    + ["overflow"] + LATENCY_COLUMNS
    + ["send_lag_p99_ms", "send_lag_max_ms", "gen_cpu_max", "gen_cpu_total", "processes",
       "connections_opened", "tcp_tw_max", "tcp_inuse_max", "generator_bound", "bound_reasons"]
)


def _ms(x: float) -> float:
    return round(float(x) * 1000.0, 3) if math.isfinite(x) else float("nan")


def summarize(step: int, offered: float, t_start: float, t_end: float, a: dict[str, np.ndarray],
              workers: list[dict[str, Any]]) -> dict[str, Any]:
    """The steps.csv row for one step. ``a`` holds the concatenated arrays of all processes
    (epoch seconds); ``workers`` what each process measured of itself."""
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
    # latency of successful replies, from the intended instant and from the actual send
    good = ok & inwin
    lat_i = (done[good] - intended[good])
    lat_s = (done[good] - sent[good])
    for p in PERCENTILES:
        row[f"lat_{_pct_name(p)}_ms"] = _ms(np.percentile(lat_i, p)) if len(lat_i) else float("nan")
        row[f"lat_sent_{_pct_name(p)}_ms"] = _ms(np.percentile(lat_s, p)) if len(lat_s) else float("nan")
    row["lat_mean_ms"] = _ms(lat_i.mean()) if len(lat_i) else float("nan")
    row["lat_max_ms"] = _ms(lat_i.max()) if len(lat_i) else float("nan")
    row["lat_sent_mean_ms"] = _ms(lat_s.mean()) if len(lat_s) else float("nan")
    s_ok = inwin & np.isfinite(sent)
    lag = sent[s_ok] - intended[s_ok]
    row["send_lag_p99_ms"] = _ms(np.percentile(lag, 99)) if len(lag) else float("nan")
    row["send_lag_max_ms"] = _ms(lag.max()) if len(lag) else float("nan")
    cpus = [w.get("cpu_frac", float("nan")) for w in workers]
    row["gen_cpu_max"] = round(max(cpus), 4) if cpus else float("nan")
    row["gen_cpu_total"] = round(sum(cpus), 4) if cpus else float("nan")
    row["processes"] = len(workers)
    row["connections_opened"] = int(sum(w.get("connections_opened", 0) for w in workers))
    # processes in one namespace see the same counters: take the max, not the sum
    row["tcp_tw_max"] = max((w.get("tcp_tw_max", 0) for w in workers), default=0)
    row["tcp_inuse_max"] = max((w.get("tcp_inuse_max", 0) for w in workers), default=0)
    reasons = bound_reasons(row)
    row["generator_bound"] = bool(reasons)
    row["bound_reasons"] = ";".join(reasons)
    return {c: row.get(c) for c in STEP_COLUMNS}


def bound_reasons(row: dict[str, Any]) -> list[str]:
    """Why a step cannot be trusted as the server's answer to its offered load.

    The send ratio compares sends with the step's own schedule, which for Poisson gaps
    differs from the nominal rate by chance (about 1/sqrt(n))."""
    out = []
    if row["intended"] and row["achieved_rate"] < BOUND_SEND_RATIO * row["scheduled_rate"]:
        out.append(f"achieved {row['achieved_rate']:.0f}/s < 98% of {row['scheduled_rate']:.0f}/s")
    if row["gen_cpu_max"] == row["gen_cpu_max"] and row["gen_cpu_max"] > BOUND_CPU:
        out.append(f"generator CPU {row['gen_cpu_max']:.0%}")
    if row["overflow"]:
        out.append(f"{row['overflow']} overflowed")
    return out
