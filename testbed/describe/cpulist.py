"""CPU lists as the kernel writes them ("1", "0-1,3"): one parser for the whole project
(topologies' cpusets, cgroups read back, the load generator's --cpus, the analysis)."""

from __future__ import annotations

from typing import Iterable

RULE = "a CPU list like '1' or '0-1,3'"


def parse(text: str) -> frozenset[int]:
    """The CPUs of ``text`` (blank: none); ValueError naming the rule when it is not a list."""
    cpus: set[int] = set()
    for part in str(text).strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"{text!r} is not {RULE}") from None
        if a < 0 or b < a:
            raise ValueError(f"{text!r} is not {RULE}")
        cpus.update(range(a, b + 1))
    return frozenset(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    return ",".join(map(str, sorted(cpus)))
