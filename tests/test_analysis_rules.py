"""The report's rules on small fixed tables whose answers are worked out by hand in the
comments and written as literals: the peak (faithful steps only, all steps when none is
faithful), the capacity at the latency target, the knee, the gains paired by round, and
the balancing results (peak or mean over phases per policy, and the controller's moves,
reversals and final split read from its decision log). A wrong rule gives other numbers.
Milliseconds, no root.
"""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.balance import comparisons, comparison_sentences, summary_table as balance_table
from analysis.frames import prepare
from analysis.sections.summary import summary_table

OFFERED = [100, 200, 300, 400]


def _steps(mode: str, rep: int, replies: list[float], saturated: list[bool], *, generator_bound=(),
           oversubscribed: bool = False, workload: str = "static", balance: str | None = None,
           offered: list[float] = OFFERED, phases: list[int] | None = None) -> list[dict]:
    point = f"{mode}-{balance or 'none'}-{workload}-r{rep}"
    return [{"point": point, "mode": mode, "balance": balance, "workload": workload, "repetition": rep,
             "offered_rate": o, "reply_rate_avg": r, "saturated": s, "t_start": 0.0, "t_end": 10.0,
             "generator_bound": o in generator_bound, "oversubscribed": oversubscribed,
             **({"phase": phases[i]} if phases else {})}
            for i, (o, r, s) in enumerate(zip(offered, replies, saturated))]


def test_peak_capacity_knee_and_gains_by_hand():
    rows = (
        # Regular TCP: peaks 240 (r1) and 260 (r2) at 300/s; the last step not saturated is 200/s
        _steps("regular", 1, [100, 198, 240, 230], [False, False, True, True])
        + _steps("regular", 2, [100, 196, 260, 250], [False, False, True, True])
        # r1's highest reply rate (390 at 400/s) is generator-bound: its peak is 290, at 300/s
        + _steps("eager-accept", 1, [100, 200, 290, 390], [False] * 4, generator_bound={400})
        + _steps("eager-accept", 2, [100, 200, 282, 300], [False, False, False, True])
        # every step oversubscribed: the peak falls back to all steps, and nothing met the target
        + _steps("split", 1, [90, 150, 170, 160], [False] * 4, oversubscribed=True)
        + _steps("split", 2, [95, 160, 180, 150], [False] * 4, oversubscribed=True))
    sat = prepare(pd.DataFrame(rows)).saturation.set_index("mode_label")

    # peak: the mean of the repetitions' peaks
    assert sat.loc["regular", "peak_mean"] == pytest.approx(250.0)        # (240 + 260) / 2
    assert sat.loc["eager-accept", "peak_mean"] == pytest.approx(295.0)   # (290 + 300) / 2, not 390
    assert sat.loc["split", "peak_mean"] == pytest.approx(175.0)          # (170 + 180) / 2, from flagged steps
    assert list(sat["all_faithful"]) == [True, True, False]
    # capacity: the highest offered rate whose step was faithful and not saturated
    assert sat.loc["regular", "capacity_mean"] == pytest.approx(200.0)
    assert sat.loc["eager-accept", "capacity_mean"] == pytest.approx(300.0)  # r1: 400/s is flagged; r2: saturated
    assert pd.isna(sat.loc["split", "capacity_mean"])                        # no faithful step at all
    # knee: from there on the mean reply rate stays under 95% of offered
    # regular: 197/200 = 0.985 served, 250/300 = 0.83 and 240/400 = 0.6 not: knee 300
    # eager-accept: 286/300 = 0.953 served, 345/400 = 0.86 not: knee 400
    # split: 92.5/100 is already under 95%: knee 100
    assert list(sat["knee_offered"]) == [300.0, 400.0, 100.0]
    # flagged offered rates (any repetition flagged): eager-accept 400/s; split all four
    assert list(sat["flagged_steps"]) == [0, 1, 4]
    # gains paired by round: eager-accept 290/240 - 1 = +20.83%, 300/260 - 1 = +15.38%;
    # mean +18.11%; sd 3.853, t(1) = 12.706: half width 12.706 * 3.853 / sqrt(2) = 34.62
    assert sat.loc["eager-accept", "gain_pct"] == pytest.approx(18.109, abs=1e-3)
    assert sat.loc["eager-accept", "gain_ci_lo"] == pytest.approx(-16.507, abs=1e-2)
    assert sat.loc["eager-accept", "gain_ci_hi"] == pytest.approx(52.725, abs=1e-2)
    assert sat.loc["eager-accept", "gain_verdict"] == "not resolved"  # contains 0, and effects beyond ±5%
    # capacity gain: 300/200 in both rounds: +50%, no spread; but the grid says the
    # capacities lie in [200, 300) and [300, 400): from 300/300 - 1 = 0 to 400/200 - 1 = +100%
    assert sat.loc["eager-accept", "capacity_gain_pct"] == pytest.approx(50.0)
    assert (sat.loc["eager-accept", "capacity_gain_ci_lo"], sat.loc["eager-accept", "capacity_gain_ci_hi"]) == \
        pytest.approx((0.0, 100.0))
    assert sat.loc["eager-accept", "capacity_gain_verdict"] == "not resolved"
    # split: 170/240 - 1 = -29.17%, 180/260 - 1 = -30.77%: mean -29.97%, half width 10.18
    assert sat.loc["split", "gain_pct"] == pytest.approx(-29.968, abs=1e-3)
    assert sat.loc["split", "gain_verdict"] == "lower"
    # overload: at 400/s = 2x capacity, Regular kept 230/240 and 250/260 of its peaks
    assert sat.loc["regular", "overload_x"] == pytest.approx(2.0)
    assert sat.loc["regular", "retained_mean"] == pytest.approx((230 / 240 + 250 / 260) / 2)

    table = summary_table(prepare(pd.DataFrame(rows))).set_index("mode")
    assert table.loc["eager-accept", "peak gain"] == "+18.1% [-16.5, +52.7] not resolved"
    assert table.loc["eager-accept", "capacity gain"] == "+50.0% [+0.0, +100.0] not resolved"
    assert table.loc["split", "capacity req/s"] == "< 100 (no step met the target)"
    assert table.loc["split", "flags"].startswith("peak from flagged steps")


# The balancing fixture: two repetitions of static load (two offered rates) and one round
# of a two-phase shifting mix, for Regular TCP, a fixed split and the adaptive controller.
BALANCE_STEPS = (
    _steps("regular", 1, [1000, 1500], [False, True], offered=[1000, 2000])
    + _steps("regular", 2, [1000, 1700], [False, True], offered=[1000, 2000])
    + _steps("eager-accept", 1, [1000, 1800], [False, True], offered=[1000, 2000], balance="fixed:0.5")
    + _steps("eager-accept", 2, [1000, 1900], [False, True], offered=[1000, 2000], balance="fixed:0.5")
    + _steps("eager-accept", 1, [1000, 1800], [False, True], offered=[1000, 2000], balance="adaptive")
    + _steps("eager-accept", 2, [1000, 1850], [False, True], offered=[1000, 2000], balance="adaptive")
    + _steps("regular", 1, [800, 600], [True, True], offered=[1000, 1000], workload="shifting", phases=[0, 1])
    + _steps("eager-accept", 1, [900, 700], [True, True], offered=[1000, 1000], workload="shifting",
             phases=[0, 1], balance="fixed:0.5")
    + _steps("eager-accept", 1, [1000, 920], [True, True], offered=[1000, 1000], workload="shifting",
             phases=[0, 1], balance="adaptive"))


def _decision(point: str, t: float, split: float, moves: int, reversals: int) -> dict:
    return {"point": point, "t": t, "split": split, "moves": moves, "reversals": reversals, "knob": "work"}


ADAPTIVE_R1, ADAPTIVE_R2 = "eager-accept-adaptive-static-r1", "eager-accept-adaptive-static-r2"
# the controller's log, out of time order on purpose: in r1 it moved 1.0 -> 0.9 -> 0.8 and
# back up to 0.9 (3 moves, 1 reversal); in r2 1.0 -> 0.9 -> 0.8 (2 moves, no reversal)
DECISIONS = pd.DataFrame([
    _decision(ADAPTIVE_R1, 4.0, 0.9, 3, 1), _decision(ADAPTIVE_R1, 1.0, 1.0, 0, 0),
    _decision(ADAPTIVE_R1, 3.0, 0.8, 2, 0), _decision(ADAPTIVE_R1, 2.0, 0.9, 1, 0),
    _decision(ADAPTIVE_R2, 1.0, 1.0, 0, 0), _decision(ADAPTIVE_R2, 2.0, 0.9, 1, 0),
    _decision(ADAPTIVE_R2, 3.0, 0.8, 2, 0),
    _decision("eager-accept-fixed:0.5-static-r1", 1.0, 0.5, 0, 0),
    _decision("eager-accept-fixed:0.5-static-r1", 2.0, 0.5, 0, 0),
])


def test_the_controllers_moves_are_seen_in_the_analysis():
    comps = {c.workload: c for c in comparisons(prepare(pd.DataFrame(BALANCE_STEPS)), DECISIONS)}
    assert set(comps) == {"static", "shifting"}
    static = comps["static"]
    adaptive, fixed = static.adaptive[0], static.fixed[0]
    # moves and reversals from each repetition's last decision, averaged: (3 + 2) / 2, (1 + 0) / 2;
    # the final split (0.9 + 0.8) / 2
    assert (adaptive.moves, adaptive.reversals) == (2.5, 0.5)
    assert adaptive.final_split == pytest.approx(0.85)
    assert adaptive.knob == "work"
    assert (fixed.moves, fixed.reversals, fixed.final_split) == (0.0, 0.0, 0.5)
    # results: peaks (1800 + 1850) / 2 = 1825, fixed (1800 + 1900) / 2 = 1850, Regular 1600
    assert (adaptive.value, fixed.value, static.regular.value) == (1825.0, 1850.0, 1600.0)
    row = balance_table([static]).iloc[0]
    assert (row["moves"], row["reversals"], row["final split"]) == ("2.5", "0.5", "0.850")
    assert row["adaptive / best fixed"] == "0.986"   # 1825 / 1850
    assert row["adaptive / Regular"] == "1.141"      # 1825 / 1600
    # shifting: the mean over the phases: (1000 + 920) / 2 = 960 against fixed (900 + 700) / 2 = 800
    shifting = comps["shifting"]
    assert shifting.adaptive[0].value == 960.0 and shifting.adaptive[0].phases == [1000.0, 920.0]
    assert shifting.fixed[0].value == 800.0 and shifting.regular.value == 700.0
    # no decision logged for the shifting points: nothing is made up
    assert pd.isna(shifting.adaptive[0].moves)
    text = " ".join(comparison_sentences([static, shifting], []))
    # results, not goals: the paired gains with their intervals, nothing met or missed
    assert "against the best fixed split fixed:0.5, peak: -1.3% [-18.0, +15.4] over 2 paired rounds, " \
           "not resolved (1,825 vs 1,850 replies/s)" in text
    assert "mean reply rate over the phases: " in text
    assert "MET" not in text and "MISSED" not in text and "Goal" not in text


def test_report_html_escapes_what_a_run_wrote():
    """A point's error text or a node's name is text on the page, never markup (the
    templates autoescape), and a flagged row carries its mark."""
    from analysis.render import table
    html = str(table(pd.DataFrame([{"point": "p<1>", "error": "<script>alert(1)</script> & more"}]),
                     table_id="points", flag_col="error"))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "p&lt;1&gt;" in html and '<tr class="flagged">' in html and "⚑" in html
