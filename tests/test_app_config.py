"""The host application's command line is made from an AppConfig and read back by the same
table: what the service plan writes is what the application runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.app.config import AppConfig
from testbed.offload.modes import MODES


@pytest.mark.parametrize("cfg", [
    AppConfig(Path("/d"), MODES["regular"], listen=("0.0.0.0", 80), listen_backlog=4096, dynamic_cost_us=300),
    AppConfig(Path("/d"), MODES["eager-accept"], tunnel="shm:tcps-x-tcpserver", token_file=Path("/t"),
              host_id="h1", poll_us=2000, stats_file=Path("/s.json"), header_timeout=2.5, listen_port=8080),
])
def test_argv_round_trips(cfg: AppConfig) -> None:
    again, _ = AppConfig.from_argv(cfg.to_argv())
    assert again == cfg


@pytest.mark.parametrize("kw, says", [
    ({"mode": MODES["regular"]}, "needs --listen"),
    ({"mode": MODES["split"]}, "needs --tunnel"),
    ({"mode": MODES["regular"], "listen": ("a", 1), "poll_us": 5000}, "offloaded mode"),
    ({"mode": MODES["split"], "tunnel": "tcp:a:1", "token_file": Path("t"), "listen": ("a", 1)}, "no --listen"),
    ({"mode": MODES["split"], "tunnel": "tcp:a:1", "token_file": Path("t"), "poll_us": -1}, "--poll-us"),
    ({"mode": MODES["regular"], "listen": ("a", 1), "dynamic_cost_us": -5}, "--dynamic-cost-us"),
    ({"mode": MODES["regular"], "listen": ("a", 1), "header_timeout": 0}, "--header-timeout"),
])
def test_a_bad_setting_is_refused_naming_it(kw: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        AppConfig(Path("/d"), **kw)
