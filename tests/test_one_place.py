"""Each setting is read and checked in one place: the places that check ``poll_us``, that
turn a mode's name into a ``Mode`` or compare it, that parse CPU budgets and offered rates,
listed from the source text and its syntax tree."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = [p for d in ("testbed", "loadgen", "bench") for p in sorted((ROOT / d).rglob("*.py"))]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _calls(name: str) -> Counter:
    """Files calling ``name(...)`` (a plain or dotted call), with how often."""
    out: Counter = Counter()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if called == name:
                    out[_rel(path)] += 1
    return out


def _literal(text: str) -> Counter:
    out: Counter = Counter()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == text:
                out[_rel(path)] += 1
    return out


def test_poll_us_is_checked_by_one_rule_and_declared_once_per_command_line() -> None:
    # the rule: one call, in the daemon's table of rules (options.py and the app use that table)
    assert _calls("check_period_us") == {"testbed/offload/config.py": 1}
    # the flag: once per command line that takes it (the daemon's table, the host app's table,
    # up's flags made from ServiceOptions); the service plan writes neither by hand
    assert _literal("--poll-us") == {"testbed/offload/config.py": 1, "testbed/app/config.py": 1,
                                     "testbed/describe/options.py": 1,
                                     "bench/san.py": 2}  # bench.san's own processes, not the testbed's
    # nothing else in the testbed's edges names it: cli.py and experiment.py take the options whole
    for path in ("testbed/commands/cli.py", "testbed/describe/experiment.py", "testbed/system/lifecycle.py", "testbed/measure/runner.py"):
        assert "poll_us" not in (ROOT / path).read_text(), path


MODE_NAMES = {"regular", "split", "async-send", "eager-receive", "eager-accept", "setup-with-accept"}


def test_no_code_compares_a_mode_by_its_name() -> None:
    offenders = []
    for path in CODE:
        if path.parts[-3:] == ("testbed", "offload", "modes.py") or path.parts[-2] == "bench":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators]
                          if isinstance(c, ast.Constant) and c.value in MODE_NAMES]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                           for e in c.elts if isinstance(e, ast.Constant) and e.value in MODE_NAMES]
                if consts:
                    offenders.append(f"{_rel(path)}:{node.lineno}")
    assert offenders == []


def test_a_mode_name_becomes_a_mode_once_per_edge() -> None:
    # each place a name enters: up's --mode, experiment files, a program's Testbed(mode="...")
    # and a recorded state, the daemon's and the host app's command lines, the host library's API
    assert _calls("get_mode") == {"testbed/commands/cli.py": 1, "testbed/describe/experiment.py": 1, "testbed/system/lifecycle.py": 1,
                                  "testbed/offload/config.py": 1, "testbed/app/config.py": 1,
                                  "testbed/offload/hostsock.py": 1}


def test_budgets_are_parsed_once_and_never_turned_back_into_strings() -> None:
    # command-line strings (-p host_cpu=0.3) take their type in one place; YAML values arrive typed
    assert _calls("_coerce") == {"testbed/describe/topology.py": 1}
    for path in ("testbed/describe/experiment.py", "testbed/measure/runner.py"):
        assert '"none"' not in (ROOT / path).read_text(), path
    # checked against the machine where a testbed is built, and before an experiment runs
    assert _calls("check_cpu_budgets") == {"testbed/system/lifecycle.py": 1, "testbed/describe/experiment.py": 1}


def test_offered_rates_have_one_parser_and_one_limit() -> None:
    assert _calls("parse_rates").keys() <= {"testbed/describe/load.py", "loadgen/cli.py",
                                            "loadgen/locustfile_sweep.py", "bench/loadgen.py"}
    limits = [(_rel(p), m.group(0)) for p in CODE for m in re.finditer(r"^MAX_RATE\s*=", p.read_text(), re.M)]
    assert limits == [("loadgen/schedule.py", "MAX_RATE =")]
