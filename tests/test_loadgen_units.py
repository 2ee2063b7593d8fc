"""Pure parts of the load generator: schedules, workloads, parsing, step rows, targets."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.engine import ERR, parse_head
from loadgen.schedule import ScheduleError, parse_rates, send_times
from loadgen.stats import STEP_COLUMNS, summarize
from loadgen.target import TargetError, parse_target
from loadgen.workload import CLASS_MIX, WorkloadError, make_workload, static_from_manifest


def test_rates_parse_ranges_lists_and_refuse_nonsense():
    assert parse_rates("100:500:100") == [100, 200, 300, 400, 500]
    assert parse_rates("250,500") == [250, 500]
    for bad in ("0", "100:0:100", "-5", "1e9", "abc", "100:200:0", "nan"):
        with pytest.raises(ScheduleError):
            parse_rates(bad)


def test_fixed_gaps_interleave_across_processes_into_exact_offered_gaps():
    parts = [send_times(1000, 1.0, share=k, shares=3) for k in range(3)]
    merged = np.sort(np.concatenate(parts))
    assert len(merged) == 1000
    assert np.allclose(np.diff(merged), 0.001)


def test_poisson_gaps_have_the_offered_mean_and_are_seeded():
    t = np.concatenate([send_times(2000, 5.0, share=k, shares=2, poisson=True, seed=3) for k in range(2)])
    assert abs(len(t) / 5.0 - 2000) < 2000 * 0.05
    gaps = np.diff(np.sort(t))
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # exponential: cv = 1
    assert np.array_equal(send_times(100, 1, poisson=True, seed=1), send_times(100, 1, poisson=True, seed=1))


def test_static_workload_follows_the_specweb_class_mix():
    files = [{"path": f"/d/c{c}_{i}", "size": 100 * (i + 1), "class": c} for c in range(4) for i in range(9)]
    wl = static_from_manifest({"files": files})
    draws = wl.draw(200_000, np.random.default_rng(1))
    classes = np.array(wl.classes)[draws]
    for c, p in CLASS_MIX.items():
        assert abs((classes == c).mean() - p) < 0.01
    # Zipf-like within a class: the first file of class 1 is drawn more than the last
    c1 = draws[classes == 1]
    first, last = wl.paths.index("/d/c1_0"), wl.paths.index("/d/c1_8")
    assert (c1 == first).sum() > 5 * (c1 == last).sum()


def test_workload_errors_are_clear():
    with pytest.raises(WorkloadError, match="unknown workload"):
        make_workload("bogus", "http://127.0.0.1/")
    with pytest.raises(WorkloadError, match="manifest"):
        static_from_manifest({"nope": 1})
    assert make_workload("dynamic", "http://127.0.0.1/", dynamic_cost_us=250).paths == ["/dynamic?cost_us=250"]


def test_response_head_parsing():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"
    assert parse_head(head + b"body") == (200, len(head), 12, False)
    head = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\n"
    assert parse_head(head) == (404, len(head), -1, True)
    assert parse_head(b"HTTP/1.1 200 OK\r\nConn") is None
    with pytest.raises(ValueError):
        parse_head(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_targets_other_than_loopback_or_testbed_are_refused(monkeypatch):
    monkeypatch.setattr("loadgen.target.known_addresses", lambda: {"10.77.1.2"})
    assert parse_target("http://127.0.0.1:8080/").addr == ("127.0.0.1", 8080)
    assert parse_target("http://10.77.1.2/").addr == ("10.77.1.2", 80)
    with pytest.raises(TargetError, match="not loopback"):
        parse_target("http://10.99.0.1/")
    with pytest.raises(TargetError, match="only http"):
        parse_target("https://127.0.0.1/")


def _arrays(n: int, rate: float, t0: float, lat: float, err_every: int = 0):
    intended = t0 + np.arange(n) / rate
    err = np.zeros(n, np.int8)
    if err_every:
        err[::err_every] = ERR["timeout"]
    return {"intended": intended, "sent": intended + 0.0001, "done": intended + lat,
            "status": np.where(err == 0, 200, 0).astype(np.int16), "nbytes": np.full(n, 100),
            "error": err, "item": np.zeros(n, np.int32)}


def test_step_row_has_every_column_and_flags_a_bound_generator():
    a = _arrays(3000, 1000, 100.0, 0.002)
    row = summarize(0, 1000, 101.0, 103.0, a, [{"cpu_frac": 0.2}])
    assert list(row) == STEP_COLUMNS
    assert row["achieved_rate"] == pytest.approx(1000, rel=0.01)
    assert row["reply_rate_avg"] == pytest.approx(1000, rel=0.01) and row["reply_rate_stddev"] < 5
    assert row["lat_p50_ms"] == pytest.approx(2.0, abs=0.01)
    assert row["lat_sent_p50_ms"] == pytest.approx(1.9, abs=0.01)
    assert not row["generator_bound"]
    hot = summarize(0, 1000, 101.0, 103.0, a, [{"cpu_frac": 0.95}])
    assert hot["generator_bound"] and "CPU" in hot["bound_reasons"]
    b = _arrays(3000, 1000, 100.0, 0.002, err_every=10)
    b["error"][b["error"] == ERR["timeout"]] = ERR["overflow"]
    b["sent"][b["error"] == ERR["overflow"]] = np.nan
    over = summarize(0, 1000, 101.0, 103.0, b, [{"cpu_frac": 0.1}])
    assert over["overflow"] == 200 and over["generator_bound"]


def test_a_server_that_stops_answering_is_saturated_not_generator_bound():
    """Requests the server never answered time out: the server's failure, as a client sees it."""
    a = _arrays(3000, 1000, 100.0, 0.002, err_every=2)  # half time out after 5 s
    a["done"][a["error"] == ERR["timeout"]] = a["intended"][a["error"] == ERR["timeout"]] + 5.0
    row = summarize(0, 1000, 101.0, 103.0, a, [{"cpu_frac": 0.1, "cpu_group": "g", "cpu_capacity": 2.0}])
    assert not row["generator_bound"], row["bound_reasons"]
    assert row["saturated"] and "errors" in row["saturated_reasons"] and "replies" in row["saturated_reasons"]
    # failed requests count in the latency percentiles at their time of failure
    assert row["lat_p99_ms"] == pytest.approx(5000, rel=0.01)
    assert row["lat_ok_p99_ms"] == pytest.approx(2.0, abs=0.01)
    assert "p99 5000 ms > target 200 ms" in row["saturated_reasons"]


def test_latency_over_target_alone_saturates():
    a = _arrays(3000, 1000, 100.0, 0.3)
    assert "p99" in summarize(0, 1000, 101.0, 103.0, a, [], latency_target_ms=200)["saturated_reasons"]
    assert not summarize(0, 1000, 101.0, 103.0, a, [], latency_target_ms=500)["saturated"]


def test_processes_sharing_a_cpu_set_are_bound_together():
    """Two processes at 48% each of one core's quota: neither trips the per-process rule."""
    a = _arrays(3000, 1000, 100.0, 0.002)
    ws = [{"cpu_frac": 0.029, "cpu_group": "g", "cpu_capacity": 0.06}] * 2
    row = summarize(0, 1000, 101.0, 103.0, a, ws)
    assert row["generator_bound"] and "CPU set" in row["bound_reasons"]
    apart = [{"cpu_frac": 0.029, "cpu_group": "a", "cpu_capacity": 1.0},
             {"cpu_frac": 0.029, "cpu_group": "b", "cpu_capacity": 1.0}]
    assert not summarize(0, 1000, 101.0, 103.0, a, apart)["generator_bound"]


def test_send_lag_and_own_resources_bind_the_generator():
    a = _arrays(3000, 1000, 100.0, 0.002)
    a["sent"] = a["intended"] + 0.15  # every send 150 ms late, all still inside the window
    assert "send lag" in summarize(0, 1000, 101.0, 103.0, a, [])["bound_reasons"]
    b = _arrays(3000, 1000, 100.0, 0.002)
    b["error"][::50] = ERR["addr_unavailable"]
    row = summarize(0, 1000, 101.0, 103.0, b, [])
    assert row["generator_bound"] and "addr unavailable" in row["bound_reasons"]
    assert not row["saturated"]  # its own failures are not the server's errors


def test_inflight_capacity_outlasts_the_timeout():
    from loadgen.sweep import inflight_per_process
    assert inflight_per_process(6000, 2, 5.0) >= 3000 * 6
    assert inflight_per_process(100, 1, 5.0) >= 600
