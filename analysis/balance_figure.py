"""The balancing section's figure: reply rate per 1 s bin over each point's time (replies
completed in the bin, from ``requests.parquet``: status 1-399 and no error), one line per
point, the split (the network side's share, from the controller's decisions) on a second
y axis, the offered load and the measured windows shaded, the shifting workload's phase
boundaries marked. Only the first repetition is drawn: the lines of several would hide
the controller's moves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .balance import SHIFTING, Comparison, PointResult
from .frames import REGULAR, Prepared



def _point_replies(point_dir: Path) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """(completion times of the point's successful replies, [(phase, first intended time)] per
    load-generator run: one for a sweep, one per phase of the shifting workload)."""
    import pyarrow.parquet as pq
    dones, spans = [], []
    for f in sorted((point_dir / "load").glob("**/requests.parquet")):
        t = pq.read_table(f, columns=["intended", "done", "status", "error"]).to_pandas()
        if t.empty:
            continue
        err = t["error"].astype(object).where(t["error"].notna(), "").astype(str)
        ok = (err == "") & (t["status"] > 0) & (t["status"] < 400) & t["done"].notna()
        dones.append(t.loc[ok, "done"].to_numpy(dtype=float))
        name = f.parent.name
        phase = int(name[5:]) if name.startswith("phase") and name[5:].isdigit() else -1
        spans.append((phase, float(t["intended"].min())))
    return (np.concatenate(dones) if dones else np.zeros(0)), sorted(spans, key=lambda s: s[1])


class _Clock:
    """Maps each point's epoch times onto one axis on which every point's load-generator runs
    (phases) start together: a phase starts at the same x for every point, late enough that
    no point's previous phase runs into it."""

    def __init__(self, spans: dict[str, list[tuple[int, float]]]):
        self.spans = {p: s for p, s in spans.items() if s}
        n = max((len(s) for s in self.spans.values()), default=0)
        self.starts = [0.0] * n
        for k in range(1, n):
            gaps = [s[k][1] - s[k - 1][1] for s in self.spans.values() if len(s) > k]
            self.starts[k] = self.starts[k - 1] + max(gaps)
        self.phases = [next((s[k][0] for s in self.spans.values() if len(s) > k), -1) for k in range(n)]

    def x(self, point: str, t: np.ndarray) -> np.ndarray:
        s = self.spans.get(point)
        t = np.asarray(t, dtype=float)
        if not s:
            return np.full(t.shape, np.nan)
        los = np.array([lo for _, lo in s])
        k = np.clip(np.searchsorted(los, t, side="right") - 1, 0, len(los) - 1)
        return t - los[k] + np.array(self.starts)[k]


def _label(r: PointResult) -> str:
    return "Regular TCP" if r.mode == REGULAR else f"{r.mode}:{r.balance}" if r.balance else r.mode


def draw_workload(c: Comparison, run: Any, prep: Prepared, out: Path, name: str) -> str:
    """Reply rate over time per point (repetition 1) with the split on a second y axis."""
    from . import figures
    plt = figures.plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(12, 5.4))
    ax2 = ax.twinx()
    balance = run.tables.get("balance")
    results = c.all()
    fixed_cmap = plt.get_cmap("viridis")
    handles: list[Any] = []
    first_rep = {}
    st = prep.steps
    for r in results:
        reps = st[st["point"].isin(r.points)].sort_values("repetition")
        first_rep[id(r)] = reps["point"].iloc[0] if not reps.empty else (r.points[0] if r.points else None)
    replies, spans = {}, {}
    for r in results:
        point = first_rep[id(r)]
        if point is not None:
            replies[point], spans[point] = _point_replies(run.dir / "points" / point)
    clock = _Clock(spans)
    xmax = 0.0
    for r in results:
        point = first_rep[id(r)]
        if point is None or point not in clock.spans:
            continue
        if r.mode == REGULAR:
            color, lw, z = "black", 1.6, 4
        elif r.kind == "adaptive":
            color, lw, z = ("tab:red", "tab:purple", "tab:brown")[c.adaptive.index(r) % 3], 2.4, 6
        elif r.kind == "fixed":
            n = max(len(c.fixed) - 1, 1)
            color, lw, z = fixed_cmap(0.1 + 0.75 * c.fixed.index(r) / n), 1.4, 3
        else:
            color, lw, z = "tab:gray", 1.2, 2
        x = clock.x(point, replies[point])
        x = x[x >= 0]
        if len(x):
            counts = np.bincount(np.floor(x).astype(np.int64)).astype(float)
            ax.plot(np.arange(len(counts)) + 0.5, counts, color=color, linewidth=lw, zorder=z, marker="o",
                    markersize=2.5)
            xmax = max(xmax, float(len(counts)))
        handles.append(Line2D([], [], color=color, linewidth=lw, label=f"{_label(r)}: replies/s"))
        # the split: the controller's decisions (a fixed policy logs its constant split too)
        if balance is not None and not balance.empty and "point" in balance:
            dec = balance[balance["point"] == point].sort_values("t")
            if not dec.empty:
                style = dict(linewidth=2.0, linestyle="--") if r.kind == "adaptive" else \
                    dict(linewidth=1.0, linestyle=":")
                ax2.step(clock.x(point, dec["t"].to_numpy(dtype=float)), dec["split"].to_numpy(dtype=float),
                         where="post", color=color, zorder=z, alpha=0.9, **style)  # type: ignore[arg-type]
                handles.append(Line2D([], [], color=color, label=f"{_label(r)}: split (right axis)",
                                      **style))  # type: ignore[arg-type]
    # offered load and measured windows of the adaptive point (else the first), phase starts
    ref = next((first_rep[id(r)] for r in c.adaptive if first_rep[id(r)] in clock.spans), None) or \
        next((first_rep[id(r)] for r in results if first_rep[id(r)] in clock.spans), None)
    if ref is not None:
        rs = st[st["point"] == ref].sort_values("t_start")
        warm = float((run.manifest.get("load") or {}).get("warmup_seconds", 0) or 0)
        for _, s in rs.iterrows():
            a_, b_ = clock.x(ref, np.array([float(s["t_start"]), float(s["t_end"])]))
            ax.axvspan(a_, b_, color="tab:blue", alpha=0.06, linewidth=0)
            ax.hlines(float(s["offered"]), a_ - warm, b_, colors="grey", linestyles="--", linewidth=1.0)
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1.0,
                              label="offered load" + ("" if ref == first_rep[id(results[0])] and not c.adaptive
                                                      else " (adaptive point's schedule)")))
        handles.append(Patch(color="tab:blue", alpha=0.15, label="measured window"))
    if c.workload == SHIFTING and clock.starts:
        mixes = _phase_mixes(run)
        for phase, x0 in zip(clock.phases, clock.starts):
            if phase < 0:
                continue
            ax.axvline(x0, color="dimgrey", linewidth=1.4)
            mix = f"\nstatic share {mixes[phase]:g}" if phase < len(mixes) else ""
            ax.text(x0 + 0.1, 0.98, f"phase {phase}{mix}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="dimgrey")
        handles.append(Line2D([], [], color="dimgrey", linewidth=1.4, label="phase start"))
    ax.set_xlim(-0.5, max(xmax, 1.0) + 0.5)
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.0) * (1.15 if c.workload == SHIFTING else 1.05))
    ax2.set_ylim(-0.03, 1.05)
    ax.set_xlabel("seconds since the point's load started" + (" (each phase aligned on its start)"
                                                              if c.workload == SHIFTING else "")
                  + "; repetition 1")
    ax.set_ylabel("replies/s (1 s bins, replies completed in the bin)")
    ax2.set_ylabel("split: the network side's share (work the TCP server terminates)")
    ax.set_title(f"reply rate over time and the split: {c.group} ({c.mode})")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.0))
    return figures.finish(fig, out, name)


def _phase_mixes(run: Any) -> list[float]:
    ph = run.manifest.get("phases")
    if not ph:
        try:
            import yaml
            ph = (yaml.safe_load((run.dir / "experiment.yaml").read_text()) or {}).get("phases")
        except Exception:  # no yaml, no file: the phases are still marked, without their mix
            ph = None
    try:
        return [float(p["mix"]) for p in ph or []]
    except (TypeError, KeyError, ValueError):
        return []
