"""The run report: one self-contained HTML page with PNG figures beside it.

    from analysis.report import write_report
    write_report("results/quick-20261124-120000")   # -> .../report/index.html

The page states next to the numbers what they depend on: how the CPU budgets were
compared (``extra`` or ``same-total``), where softirq time was charged, the fidelity
threshold and every flagged step, the NIC offload flags, and the manifest. Its summary
says plainly whether offloading raised or lowered peak throughput against Regular TCP.
``compare.py`` builds the same page over several runs.
"""

from __future__ import annotations

import datetime as dt
import gzip
import html
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import figures
from .frames import KNEE_FRACTION, REGULAR, Prepared, cpu_at_saturation, prepare, roles_from

log = logging.getLogger(__name__)

BUDGETS_TEXT = {
    "extra": ("extra: the TCP server's CPU budget came <b>on top of</b> the host's (the paper's "
              "cluster: one more node). Regular TCP's host had only the host budget; its TCP-server "
              "node only routed IP. A gain here can come from the extra CPU alone: read it with the "
              "CPU-per-request table."),
    "same-total": ("same-total: the TCP server's CPU was taken <b>out of the same total</b> (the paper's "
                   "SMP): Regular TCP's host got host + TCP-server budget. A gain here is a gain at "
                   "equal CPU."),
}


@dataclass
class RunInfo:
    """One run directory's tables, manifest and per-point files."""
    dir: Path
    name: str
    tables: dict[str, Any]
    manifest: dict[str, Any]
    points: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunInfo":
        from . import load
        run_dir = Path(run_dir)
        tables = load(run_dir)
        points = []
        for pj in sorted((run_dir / "points").glob("*/point.json")):
            try:
                points.append(json.loads(pj.read_text()))
            except ValueError:
                log.warning("%s: not valid JSON, left out", pj)
        if not points:  # a published report keeps its points in one file
            from .published import points_of
            points = points_of(run_dir)
        return cls(dir=run_dir, name=run_dir.name, tables=tables, manifest=tables["manifest"], points=points)

    @property
    def ncpus(self) -> int | None:
        return (self.manifest.get("machine") or {}).get("cpus")


def prepare_runs(runs: list[RunInfo]) -> Prepared:
    """One Prepared over several runs (the run's name is part of each curve when >1)."""
    frames, roles = [], {}
    for r in runs:
        steps = r.tables.get("steps")
        if steps is None or steps.empty:
            continue
        frames.append(steps.assign(run=r.name if len(runs) > 1 else ""))
        roles.update(roles_from(r.tables))
        for p in r.points:
            roles.update({n: v.get("role", "") for n, v in (p.get("nodes") or {}).items()})
    if not frames:
        raise EmptyRun("no steps measured: " + ", ".join(str(r.dir) for r in runs))
    steps = pd.concat(frames, ignore_index=True)
    prep = prepare(steps, roles=roles, run=None)
    if prep.missing:
        log.info("load generator columns not found: %s", ", ".join(prep.missing))
    return prep


class EmptyRun(ValueError):
    """A run without a single measured step: there is nothing to plot."""


# --------------------------------------------------------------------------- tables


def summary_table(prep: Prepared) -> pd.DataFrame:
    """The headline table, one row per curve: peak reply rate and capacity at the latency
    target (mean and 95% interval over repetitions), and their gains over Regular TCP of
    the same run, workload and configuration, paired by round."""
    sat = prep.saturation
    if sat.empty:
        return pd.DataFrame()
    cpu = cpu_at_saturation(prep).set_index("curve")
    rows = []
    for _, s in sat.iterrows():
        flags = cpu.loc[s["curve"], "flags"] if s["curve"] in cpu.index else ""
        is_reg = s["mode_label"] == REGULAR or s["baseline"] is None
        rows.append({
            "group": s["group"] or "-",
            "mode": s["mode_label"],
            "peak replies/s": _num(s["peak_mean"]) + _ci(s["peak_ci_lo"], s["peak_ci_hi"])
            + ("" if s["saturated"] else " (≥, not saturated)"),
            "capacity req/s": _capacity(s),
            "reps": int(s["repetitions"]),
            "knee at": _num(s["knee_offered"]) if not np.isnan(s["knee_offered"]) else "none",
            "vs regular of": "-" if is_reg else (s["baseline"] or "-"),
            "peak gain": "-" if is_reg else _gain(s, "gain"),
            "capacity gain": "-" if is_reg else _gain(s, "capacity_gain"),
            "server CPU µs/reply": _num(cpu.loc[s["curve"], "cpu_us_per_reply_servers"])
            if s["curve"] in cpu.index and "cpu_us_per_reply_servers" in cpu else "-",
            "flagged steps": int(s["flagged_steps"]),
            "flags": ("peak from flagged steps; " if not s["all_faithful"] else "") + (flags or ""),
        })
    return pd.DataFrame(rows)


def _ci(lo: Any, hi: Any, digits: int = 0) -> str:
    return "" if pd.isna(lo) or pd.isna(hi) else f" [{_num(lo, digits)}, {_num(hi, digits)}]"


def _capacity(s: pd.Series) -> str:
    if pd.isna(s["capacity_mean"]):
        return f"< {_num(s['lowest_offered'])} (no step met the target)"
    text = _num(s["capacity_mean"]) + _ci(s["capacity_ci_lo"], s["capacity_ci_hi"])
    if s["capacity_reps"] < s["repetitions"]:
        text += f" ({int(s['capacity_reps'])} of {int(s['repetitions'])} reps met it)"
    return text


def _gain(s: pd.Series, prefix: str) -> str:
    """'+12.3% [+4.1, +20.5]' or '+2.0% [-3.1, +7.2] no difference'."""
    mean, v = s[f"{prefix}_pct"], s[f"{prefix}_verdict"]
    if pd.isna(mean):
        return "-"
    text = f"{mean:+.1f}%"
    if not pd.isna(s[f"{prefix}_ci_lo"]):
        text += f" [{s[f'{prefix}_ci_lo']:+.1f}, {s[f'{prefix}_ci_hi']:+.1f}]"
    if v == "no difference":
        text += " no difference"
    elif v.startswith("one repetition"):
        text += " (1 rep)"
    return text


def cpu_table(prep: Prepared, ncpus: int | None) -> pd.DataFrame:
    """Per curve at saturation: each node's user/system CPU against its budget, server CPU
    per reply by node, all CPUs busy per reply, and the equal-total-CPU projection."""
    sat = cpu_at_saturation(prep)
    if sat.empty:
        return pd.DataFrame()
    rows = []
    nan = np.full(len(sat), np.nan)
    user, system = {}, {}
    for n in prep.nodes:
        u, sy = figures.user_system(sat, n)
        user[n], system[n] = u.to_numpy(), sy.to_numpy()
    for i, (_, s) in enumerate(sat.iterrows()):
        row: dict[str, Any] = {"curve": s["curve"], "replies/s": _num(s.get("reply_rate"))}
        for n in prep.nodes:
            b = s.get(f"budget_{n}")
            row[f"{n} user+sys"] = (f"{user.get(n, nan)[i]:.2f}+{system.get(n, nan)[i]:.2f}"
                                    + (f" / {b:g}" if b is not None and not np.isnan(b) else " / -"))
            if f"throttled_{n}" in s and s[f"throttled_{n}"] > 0:
                row[f"{n} user+sys"] += f" (thr {s[f'throttled_{n}']:.2f})"
        for n in prep.server_nodes:
            row[f"µs/reply {n}"] = _num(s.get(f"cpu_us_per_reply_{n}"))
        row["µs/reply servers"] = _num(s.get("cpu_us_per_reply_servers"))
        if ncpus and "machine_idle" in s and s.get("reply_rate"):
            row["µs/reply all CPUs"] = _num((1.0 - s["machine_idle"]) * ncpus / s["reply_rate"] * 1e6)
        row["server budget"] = _num(s.get("budget_servers"), 2)
        row["flags"] = s["flags"]
        rows.append(row)
    return pd.DataFrame(rows)


def softirq_table(prep: Prepared) -> pd.DataFrame:
    """Per-CPU softirq and idle fraction at each curve's saturation step."""
    sat = cpu_at_saturation(prep)
    if sat.empty or not prep.cpus:
        return pd.DataFrame()
    rows = []
    for _, s in sat.iterrows():
        row: dict[str, Any] = {"curve": s["curve"]}
        for c in prep.cpus:
            row[f"softirq {c}"] = f"{s.get(f'softirq_{c}', np.nan):.3f}"
            if f"idle_{c}" in s:
                row[f"idle {c}"] = f"{s[f'idle_{c}']:.3f}"
        row["machine idle"] = f"{s.get('machine_idle', np.nan):.3f}"
        row["flags"] = s["flags"]
        rows.append(row)
    return pd.DataFrame(rows)


def steps_table(prep: Prepared, only_flagged: bool = False) -> pd.DataFrame:
    st = prep.steps
    if only_flagged:
        st = st[~st["faithful"]]
    cols = {"curve": "curve", "repetition": "rep", "offered": "offered", "send_rate": "sent/s",
            "reply_rate": "replies/s", "error_rate": "errors/s", "lat_p50": "p50 ms", "lat_p99": "p99 ms",
            "generator_cpu": "gen CPU", "machine_idle": "machine idle", "starved_nodes": "starved nodes",
            "bound_reasons": "generator-bound because", "flags": "flags"}
    cols.update({f"cpu_{n}": f"cpu {n}" for n in prep.nodes})
    have = [c for c in cols if c in st]
    out = st[have].rename(columns=cols).copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: _num(v, 3 if abs(v) < 10 else 0) if pd.notna(v) else "-")
    return out


def points_table(runs: list[RunInfo]) -> pd.DataFrame:
    rows = []
    for r in runs:
        for p in r.points:
            rows.append({"run": r.name, "point": p.get("point"), "status": p.get("status"),
                         "loadgen exit": p.get("loadgen_exit", "-"),
                         "seconds": _num((p.get("finished") or np.nan) - (p.get("started") or np.nan)),
                         "error": (p.get("error") or "")[:300]})
    df = pd.DataFrame(rows)
    if len(runs) == 1 and not df.empty:
        df = df.drop(columns="run")
    return df


def offloads_table(runs: list[RunInfo]) -> pd.DataFrame:
    """NIC offload flags per interface; a flag that differed between points says so."""
    seen: dict[tuple[str, str, str], set[str]] = {}
    for r in runs:
        for p in r.points:
            for iface, flags in (p.get("offloads") or {}).items():
                for k, v in flags.items():
                    seen.setdefault((r.name, iface, k), set()).add(str(v))
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for (run, iface, k), vals in seen.items():
        rows.setdefault((run, iface), {"run": run, "interface": iface})[k] = "/".join(sorted(vals))
    df = pd.DataFrame(list(rows.values()))
    if len(runs) == 1 and not df.empty:
        df = df.drop(columns="run")
    return df


def _targets(runs: list[RunInfo]) -> str:
    vals = sorted({float(r.manifest.get("latency_target_ms", 200.0)) for r in runs})
    return ", ".join(f"{v:g} ms" for v in vals)


def _num(v: Any, digits: int = 0) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    if np.isnan(f):
        return "-"
    return f"{f:,.{digits}f}"


# --------------------------------------------------------------------------- words


def summary_sentences(prep: Prepared, runs: list[RunInfo]) -> list[str]:
    """The result in words, negative results stated as plainly as positive ones."""
    out = []
    sat = prep.saturation
    budgets = {r.manifest.get("budgets", "extra") for r in runs}
    budget_note = " and ".join(f"budgets: {b}" for b in sorted(budgets))
    cpu = cpu_at_saturation(prep)
    cpu_of = dict(zip(cpu["curve"], cpu["cpu_us_per_reply_servers"])) \
        if not cpu.empty and "cpu_us_per_reply_servers" in cpu else {}
    reg_curve = {g: c for g, c, m in zip(sat["group"], sat["curve"], sat["mode_label"]) if m == REGULAR}
    for group, df in sat.groupby("group", sort=False):
        where = f"[{group}] " if group else ""
        others = df[df["mode_label"] != REGULAR]
        for _, s in others.iterrows():
            if s["baseline"] is None or pd.isna(s["regular_peak"]):
                out.append(f"{where}{s['mode_label']}: no Regular TCP curve to compare with "
                           f"(peak {s['peak_mean']:.0f} replies/s).")
                continue
            against = "" if s["baseline"] == group else " (base configuration)"
            if not s["saturated"] and not s["regular_saturated"]:
                out.append(f"{where}{s['mode_label']}: neither it nor Regular TCP{against} saturated within the "
                           f"offered range (peaks {s['peak_mean']:.0f} and {s['regular_peak']:.0f} replies/s): "
                           "no gain or loss can be measured; offer more load.")
                continue
            pct = s["gain_pct"]
            reps = int(s["gain_pairs"])
            if s["gain_verdict"] == "no difference":
                text = (f"{where}{s['mode_label']}: no difference in peak throughput against Regular TCP{against} "
                        f"(gain {pct:+.1f}%, 95% interval [{s['gain_ci_lo']:+.1f}, {s['gain_ci_hi']:+.1f}]% over "
                        f"{reps} paired rounds; peaks {s['peak_mean']:.0f} vs {s['regular_peak']:.0f} replies/s; "
                        f"{budget_note}).")
            else:
                verb = "raised" if pct > 0 else "lowered"
                interval = (f"95% interval [{s['gain_ci_lo']:+.1f}, {s['gain_ci_hi']:+.1f}]% over {reps} paired rounds"
                            if reps > 1 else "one repetition: no interval, so the sign is not established")
                text = (f"{where}{s['mode_label']}: offloading {verb} peak throughput by {abs(pct):.1f}% "
                        f"against Regular TCP{against} with the same app and event loop "
                        f"({s['peak_mean']:.0f} vs {s['regular_peak']:.0f} replies/s; {interval}; {budget_note}).")
            if not pd.isna(s.get("capacity_gain_pct")):
                text += (f" Capacity at the latency target: {_gain(s, 'capacity_gain')} "
                         f"({_num(s['capacity_mean'])} vs {_num(s['regular_capacity'])} req/s).")
            caveats = []
            if not s["saturated"]:
                caveats.append(f"{s['mode_label']} did not saturate (its peak is a lower bound)")
            if not s["regular_saturated"]:
                caveats.append("Regular TCP did not saturate (its peak is a lower bound)")
            if not s["all_faithful"]:
                caveats.append("its peak comes from flagged steps only")
            if caveats:
                text += " Caveat: " + "; ".join(caveats) + "."
            c, base = cpu_of.get(s["curve"], np.nan), cpu_of.get(reg_curve.get(s["baseline"]), np.nan)
            if c > 0 and base > 0:
                text += (f" It used {c:.0f} µs of server-side CPU per reply against Regular TCP's {base:.0f} µs: "
                         f"at the same total CPU (if CPU-bound) it would reach {base / c:.2f}x Regular TCP's "
                         f"rate ({'a gain' if base > c else 'a loss'} of {abs(base / c - 1) * 100:.0f}%).")
            out.append(text)
        measurable = others[others["saturated"] | (others["regular_saturated"] == True)]  # noqa: E712
        measurable = measurable[measurable["regular_peak"].notna()]
        if len(measurable) > 1:
            best = measurable.loc[measurable["peak_mean"].idxmax()]
            out.append(f"{where}Highest offloaded peak: {best['mode_label']} "
                       f"({_gain(best, 'gain')} against Regular TCP).")
    for _, s in sat[sat["overload_x"] >= 2.0].iterrows():
        lo, hi = s["retained_ci_lo"], s["retained_ci_hi"]
        ci = "" if pd.isna(lo) else f" [{lo:.0%}, {hi:.0%}]"
        out.append(f"[{s['group'] or s['workload']}] {s['mode_label']}: at {s['overload_x']:.1f}x its capacity it "
                   f"kept {s['retained_mean']:.0%}{ci} of its peak goodput.")
    bad = [(r.name, p.get("point"), p.get("status")) for r in runs for p in r.points if p.get("status") != "done"]
    total = sum(len(r.points) for r in runs)
    if bad:
        out.append(f"{len(bad)} of {total} points did not finish ("
                   + ", ".join(f"{pt}: {st}" for _, pt, st in bad)
                   + "): their curves are missing or have fewer repetitions; see Points.")
    n_flag = int((~prep.steps["faithful"]).sum())
    n_int = int(prep.steps["interfered"].sum())
    if n_int:
        out.append(f"{n_int} of {len(prep.steps)} steps were interfered: programs outside the testbed used more "
                   "than the fidelity threshold's CPU while they ran (foreign_cpu); measure again on a quiet "
                   "machine before quoting them.")
    if n_flag:
        out.append(f"{n_flag} of {len(prep.steps)} steps are flagged (generator-bound, oversubscribed or "
                   "interfered) and marked in every figure and table; peaks use faithful steps only where any exist.")
    return out


def irq_time_accounting(manifest: dict[str, Any]) -> str | None:
    """'y'/'n' when known: from the manifest, or from this kernel's config when the report
    is built on the kernel the run used."""
    if "irq_time_accounting" in manifest:
        return "y" if manifest["irq_time_accounting"] else "n"
    if manifest.get("kernel") != platform.release():
        return None
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith("CONFIG_IRQ_TIME_ACCOUNTING=y"):
                    return "y"
        return "n"
    except OSError:
        return None


def softirq_text(runs: list[RunInfo]) -> str:
    irq = {irq_time_accounting(r.manifest) for r in runs}
    if irq == {"n"}:
        head = ("This kernel has no IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING is not set): softirq "
                "work (veth receive, forwarding, NAT) is charged to whichever process's cgroup was running "
                "on that CPU. In Regular TCP the host and the client pay for the router's forwarding and "
                "for receiving replies; the TCP-server node's cgroup can read near zero while forwarding "
                "everything. ")
    elif irq == {"y"}:
        head = ("This kernel accounts IRQ time separately (CONFIG_IRQ_TIME_ACCOUNTING=y): softirq time shows "
                "in /proc/stat's softirq column and is not charged to the cgroups. ")
    else:
        head = ("Whether this kernel accounts IRQ time separately is not known (the report was built on "
                "another kernel than the run); without it, softirq work is charged to the cgroup of "
                "whichever process was running. ")
    return head + ("The per-CPU softirq columns from /proc/stat are shown beside the node CPU, and "
                   "'µs/reply all CPUs' counts every busy CPU cycle of the machine, which no accounting "
                   "can move between nodes, but it includes the load generator and anything else that "
                   "ran on the machine meanwhile (other users' work too).")


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1250px;color:#222;line-height:1.4}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
tr.flagged td{background:#fff1e6} .flag{color:#c00;font-weight:bold}
.note{background:#f6f8fa;border-left:4px solid #888;padding:.5em .8em;margin:.8em 0}
.result{border-left-color:#06c;font-size:1.05em} img{max-width:100%;border:1px solid #eee}
code{background:#f2f2f2;padding:0 .2em} figure{margin:1em 0} figcaption{font-size:.9em;color:#444}
"""


def html_table(df: pd.DataFrame, table_id: str | None = None, flag_col: str = "flags") -> str:
    """A table whose flagged rows are shaded and carry a ⚑ in their flag cell."""
    if df is None or df.empty:
        return "<p><i>(none)</i></p>"
    idattr = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        flagged = flag_col in df.columns and bool(str(row[flag_col]).strip())
        cells = []
        for c in df.columns:
            v = "" if row[c] is None or (isinstance(row[c], float) and np.isnan(row[c])) else str(row[c])
            cell = html.escape(v)
            if c == flag_col and flagged:
                cell = f'<span class="flag">⚑ {cell}</span>'
            cells.append(f"<td>{cell}</td>")
        body.append(f'<tr{" class=flagged" if flagged else ""}>{"".join(cells)}</tr>')
    return f"<table{idattr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td style='text-align:left'>"
                   f"{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _manifest_section(r: RunInfo) -> str:
    m = r.manifest
    when = lambda t: dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "-"  # noqa: E731
    cfs = sorted({str(p.get("cfs_period_us")) for p in r.points if p.get("cfs_period_us")})
    key = {"run directory": str(r.dir), "experiment": m.get("experiment"), "source": m.get("source"),
           "quick": m.get("quick"), "commit": m.get("commit"),
           "uncommitted changes": m.get("dirty"), "kernel": m.get("kernel"),
           "cgroup version": m.get("cgroup_version"), "machine": m.get("machine"),
           "versions": m.get("versions"), "started": when(m.get("started")), "finished": when(m.get("finished")),
           "resumed": [when(t) for t in m.get("resumed", [])], "seed": m.get("seed"),
           "repetitions": m.get("repetitions"), "topology": m.get("topology"), "params": m.get("params"),
           "sweep": m.get("sweep"), "modes": m.get("modes"), "workloads": m.get("workloads"),
           "load": m.get("load"), "budgets": m.get("budgets"), "fidelity": m.get("fidelity"),
           "CFS period (µs)": ", ".join(cfs) or "-", "host sysctls": m.get("host_sysctls"),
           "clock": m.get("clock")}
    sysctls = next((p.get("sysctls") for p in r.points if p.get("sysctls")), None)
    if sysctls:
        key["namespace sysctls (first point)"] = sysctls
    return _kv_table(key)


def _figure(figs: dict[str, str], key: str, caption: str) -> str:
    if key not in figs:
        return f"<p><i>figure {key} could not be drawn (see the log)</i></p>"
    return (f'<figure><img src="{html.escape(figs[key])}" alt="{html.escape(key)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def render_html(runs: list[RunInfo], prep: Prepared | None, figs: dict[str, str], title: str,
                extra_sections: Iterable[str] = (), lead_sections: Iterable[str] = ()) -> str:
    """``lead_sections`` follow the summary (the balancing section); ``extra_sections`` the steps."""
    ncpus = runs[0].ncpus if runs else None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    descr = " ".join(r.manifest.get("description", "") for r in runs if r.manifest.get("description"))
    if descr:
        parts.append(f"<p>{html.escape(descr)}</p>")
    parts.append(f"<p>Generated {dt.datetime.now().isoformat(timespec='seconds')} from "
                 f"{', '.join('<code>' + html.escape(str(r.dir)) + '</code>' for r in runs)}.</p>")
    if prep is None:
        parts.append("<div class='note result'><b>No step was measured</b>: there is nothing to plot. "
                     "See the points below for what failed.</div>")
        parts.extend(lead_sections)
    else:
        parts.append("<h2>Summary</h2>")
        parts.append("<div class='note result'>" + "<br>".join(html.escape(s).replace("µ", "&micro;")
                                                                for s in summary_sentences(prep, runs))
                     + "</div>")
        parts.append(html_table(summary_table(prep), table_id="summary"))
        parts.append(f"<p>Peak = the highest reply rate among a curve's faithful steps, saturated ones "
                     f"included (mean over repetitions, [95% interval]); capacity = the highest offered rate "
                     f"whose step kept errors &le; 1% and p99 latency &le; the latency target "
                     f"({_targets(runs)}); gains are paired by round (each repetition against Regular TCP "
                     f"of the same interleaved round), and a gain whose interval contains 0 is reported as "
                     f"no difference; the knee = the first offered rate whose reply "
                     f"rate stayed below {KNEE_FRACTION:.0%} of it up to the highest offered rate; a curve without "
                     f"a knee did not saturate and its peak is a lower bound. Ratios compare modes within one run, workload and "
                     f"configuration.</p>")
        parts.extend(lead_sections)
        parts.append(_limits_section(runs, prep))
        parts.append("<h2>Figures</h2>")
        parts.append(_figure(figs, "reply_rate", "Reply rate against offered load per mode, with y = x; "
                             "stars mark each curve's saturation point, dotted lines its knee; shaded bands "
                             "span the repetitions."))
        parts.append(_figure(figs, "gain", "Peak faithful reply rate per mode and gain over Regular TCP."))
        parts.append(_figure(figs, "cpu_breakdown", "CPU per node at saturation: user and system stacked, "
                             "budget as a black tick (budgets: " + ", ".join(
                                 sorted({str(r.manifest.get('budgets')) for r in runs})) + ")."))
        parts.append(_figure(figs, "cpu_per_request", "Server-side CPU per reply at saturation, stacked by "
                             "node. Is offloading worth it at the same total CPU?"))
        parts.append(_figure(figs, "latency", "Latency p50 and p99 against offered load, measured from the "
                             "intended send time (open loop: queueing in the generator counts)."))
        parts.append(_figure(figs, "errors", "Failed requests against offered load, and by kind."))
        if "overload" in figs:
            parts.append(_figure(figs, "overload", "Goodput past saturation: each mode's reply rate over its "
                                 "peak against offered load over its capacity at the latency target (means "
                                 "over repetitions). A server that behaves like a kernel keeps about its peak."))
        parts.append("<h2>CPU at saturation</h2><p>Per node: user+system CPU (cores) / budget, "
                     "throttled time when any; CPU µs per reply per server-side node.</p>")
        parts.append(html_table(cpu_table(prep, ncpus), table_id="cpu"))
        parts.append("<h2>Softirq per CPU at saturation</h2>")
        parts.append(f"<div class='note'>{html.escape(softirq_text(runs))}</div>")
        parts.append(html_table(softirq_table(prep), table_id="softirq"))
        parts.append("<h2>Flagged steps</h2>")
        parts.append(html_table(steps_table(prep, only_flagged=True), table_id="flagged"))
        parts.append("<h2>All steps</h2><details><summary>one row per step and repetition</summary>")
        parts.append(html_table(steps_table(prep), table_id="steps") + "</details>")
        if prep.missing:
            parts.append("<p class='note'>Columns the load generator did not record (shown as '-'): "
                         + html.escape(", ".join(prep.missing)) + ".</p>")
    parts.extend(extra_sections)
    parts.append("<h2>Points</h2>")
    parts.append(html_table(points_table(runs), flag_col="error"))
    parts.append("<h2>NIC offload flags</h2><p>TSO/GSO/GRO per interface (ethtool -k inside each node); "
                 "a value like on/off differed between points.</p>")
    parts.append(html_table(offloads_table(runs)))
    for r in runs:
        parts.append(f"<h2>Manifest: {html.escape(r.name)}</h2>")
        parts.append(_manifest_section(r))
    parts.append("</body></html>")
    return "\n".join(parts)


def _limits_section(runs: list[RunInfo], prep: Prepared) -> str:
    items = []
    for r in runs:
        b = r.manifest.get("budgets", "extra")
        items.append(f"<b>Budgets{' (' + html.escape(r.name) + ')' if len(runs) > 1 else ''}</b>: "
                     + BUDGETS_TEXT.get(b, html.escape(str(b))))
        fid = r.manifest.get("fidelity") or {}
        items.append(f"<b>Fidelity threshold</b>: a step is <i>oversubscribed</i> when the machine had less "
                     f"than {float(fid.get('min_idle', 0.05)):.0%} idle CPU over the step, or a budgeted node "
                     f"used under 90% of its budget while its CPUs had no idle time left; "
                     f"<i>generator-bound</i> when the load generator could not offer the load (achieved "
                     f"send rate, its own CPU, or in-flight overflow).")
    st = prep.steps
    gb = st[st["generator_bound"]]
    ov = st[st["oversubscribed"]]
    def where(df: pd.DataFrame) -> str:
        return html.escape(", ".join(f"{c} @ {o:g} req/s (r{r})" for c, o, r in
                                     zip(df["curve"], df["offered"], df["repetition"])))
    reasons = sorted({x for x in st.loc[st["generator_bound"], "bound_reasons"].dropna().astype(str)
                      for x in x.split(";") if x}) if "bound_reasons" in st else []
    items.append(f"<b>Generator-bound steps</b>: {len(gb)} of {len(st)}"
                 + (f": {where(gb)}. Reasons: {html.escape('; '.join(reasons))}" if len(gb) else "") + ".")
    starved = sorted({n for x in st.loc[st["oversubscribed"], "starved_nodes"].dropna().astype(str)
                      for n in x.split(",") if n}) if "starved_nodes" in st else []
    items.append(f"<b>Oversubscribed steps</b>: {len(ov)} of {len(st)}"
                 + (f": {where(ov)}" if len(ov) else "")
                 + (f". Starved nodes: {html.escape(', '.join(starved))}" if starved else "") + ".")
    items.append("<b>Softirq</b>: " + html.escape(softirq_text(runs)))
    offl = offloads_table(runs)
    if not offl.empty:
        flags = [c for c in offl.columns if c not in ("run", "interface")]
        vals = {f: sorted(set("/".join(offl[f].dropna().astype(str)).split("/"))) for f in flags}
        items.append("<b>NIC offloads</b>: " + html.escape("; ".join(f"{f}: {'/'.join(v)}"
                                                                      for f, v in vals.items())))
    budgets = budget_table(prep)
    return ("<h2>What these numbers depend on</h2>" + "".join(f"<div class='note'>{i}</div>" for i in items)
            + "<p>CPU budgets per node and mode (cores; '-' = unlimited):</p>" + html_table(budgets))


def budget_table(prep: Prepared) -> pd.DataFrame:
    cols = [f"budget_{n}" for n in prep.nodes if f"budget_{n}" in prep.steps]
    if not cols:
        return pd.DataFrame()
    df = prep.steps.groupby("curve", sort=False)[cols].first().reset_index()
    df.columns = ["curve"] + [c[len("budget_"):] for c in cols]
    for c in df.columns[1:]:
        df[c] = df[c].map(lambda v: "-" if v is None or pd.isna(v) else f"{float(v):g}")
    return df


# --------------------------------------------------------------------------- entry points


def build_report(run_dirs: list[str | Path], out_dir: str | Path, title: str | None = None,
                 extra: Any = None) -> tuple[Path, Prepared | None, list[RunInfo]]:
    """Load the runs, draw the figures into ``out_dir``, write ``out_dir/index.html``."""
    runs = [RunInfo.load(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        prep: Prepared | None = prepare_runs(runs)
    except EmptyRun as e:
        log.warning("%s", e)
        prep = None
    figs = figures.draw_all(prep, out, runs[0].ncpus) if prep is not None else {}
    title = title or (f"Report: {runs[0].name}" if len(runs) == 1 else
                      "Comparison: " + ", ".join(r.name for r in runs))
    sections = extra(runs, prep) if extra else []
    try:  # the balancing section (issue 8), when any run has balance points
        from . import balance
        lead = balance.sections(runs, prep, out)
    except Exception:  # it must not cost the user the rest of the report
        log.exception("the balancing section failed")
        lead = ["<h2>Balancing host and TCP server</h2><p><i>could not be built (see the log)</i></p>"]
    from .figures_nodes import sections as node_sections  # issue 13: node time, bottlenecks, claims
    lead = [*lead, *node_sections(runs, prep, out, html_table)]
    page = render_html(runs, prep, figs, title, sections, lead)
    (out / "index.html").write_text(page, encoding="utf-8")
    if len(runs) == 1:
        from .summary import write_summary
        write_summary(out, prep, runs[0].manifest)
    log.info("report written to %s", out / "index.html")
    return out / "index.html", prep, runs


def write_report(run_dir: str | Path) -> Path:
    """RUN_DIR/report/index.html with its PNG figures beside it; a published report
    (``analysis.publish``) is rebuilt in place."""
    path, _, _ = build_report([run_dir], report_dir_of(run_dir))
    return path


def report_dir_of(run_dir: str | Path) -> Path:
    from .published import is_published
    run_dir = Path(run_dir)
    return run_dir if is_published(run_dir) else run_dir / "report"


def summary_of(run_dir: str | Path) -> str:
    """The terminal summary of a run (for the runner to print after ``write_report``)."""
    runs = [RunInfo.load(run_dir)]
    try:
        prep: Prepared | None = prepare_runs(runs)
    except EmptyRun:
        prep = None
    return summary_text(prep, runs)


def summary_text(prep: Prepared | None, runs: list[RunInfo]) -> str:
    """The terminal version of the summary: the gain table and the sentences."""
    if prep is None:
        return "no step was measured; see the points in the report"
    table = summary_table(prep)
    cols = [c for c in ("group", "mode", "peak replies/s", "capacity req/s", "reps", "peak gain", "capacity gain",
                        "server CPU µs/reply", "flagged steps", "flags") if c in table]
    t = table[cols]
    if (t["group"] == "-").all():
        t = t.drop(columns="group")
    lines = [t.to_string(index=False), ""]
    lines += [f"- {s}" for s in summary_sentences(prep, runs)]
    lines.append(f"- budgets: {', '.join(sorted({str(r.manifest.get('budgets')) for r in runs}))}")
    from .balance import _subset, summary_for  # the balancing results, when a run has balance points
    for r in runs:
        text = summary_for(r, prep if len(runs) == 1 else _subset(prep, r.name))
        if text:
            lines += ["", (f"[{r.name}] " if len(runs) > 1 else "") + text]
    return "\n".join(lines)
