"""The report's sections register here; the report lays out whatever is registered, in
order, without importing the modules that compute them (the balancing section used to be
imported by the report while it imported the report back).

    from analysis.sections.registry import Section, register
    register(Section("balancing", 20, html=balancing_html, title="Balancing host and TCP server",
                     text=balancing_text))

Slots (``order``), as the page reads from top to bottom:

    10 summary           the result in words and the gain table
    20-40 beyond         balancing, where each node's time goes, the paper's claims
    50 limits            what the numbers depend on
    60-90 detail         figures, CPU and softirq at saturation, flagged and all steps
    100 extra            sections a caller adds (compare: runs side by side)
    110-130 provenance   points, NIC offload flags, manifests

A section with a ``title`` is optional: when it fails, the page says so under that title
and the rest of the report is still written; the core sections' failures propagate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..frames import Prepared
    from ..run import RunInfo


@dataclass(frozen=True)
class Report:
    """What every section is built from."""
    runs: list["RunInfo"]
    prep: "Prepared | None"      # None: no step was measured
    out: Path                    # where figures go, beside index.html
    figs: dict[str, str]         # the main figures drawn: key -> file name


@dataclass(frozen=True)
class Section:
    name: str
    order: int
    html: Callable[[Report], Any]      # markup ('' when the section has nothing to show)
    title: str = ""                    # set: optional, failures are shown under it
    needs_steps: bool = True           # left out when no step was measured
    text: Callable[[list["RunInfo"], "Prepared | None"], str] | None = None  # terminal summary lines


SECTIONS: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add (or replace, by name) a section of every report."""
    SECTIONS[section.name] = section
    return section


def ordered(extra: tuple[Section, ...] | list[Section] = ()) -> list[Section]:
    """The registered sections and ``extra`` ones, top of the page first."""
    return sorted([*SECTIONS.values(), *extra], key=lambda s: s.order)
