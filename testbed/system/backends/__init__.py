"""The backends that build a topology (base.py holds the contract), chosen here and only here.

``BACKENDS`` lists the names the CLI and experiment files accept; ``make_backend`` imports
a backend's module only when it is asked for (Mininet's own library is imported later
still, when the mininet backend builds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

from ...describe.machines import LOCAL
from ...describe.topology import BACKENDS
from ...errors import TestbedError

if TYPE_CHECKING:
    from .base import Backend, Journal



def make_backend(name: str, testbed: str, journal: "Journal | None" = None, here: str = LOCAL,
                 peers: "Mapping[str, str] | None" = None) -> "Backend":
    """The backend ``name`` for testbed ``testbed``; one short error for an unknown name.
    ``here`` is the machine whose share it builds, ``peers`` the other machines' addresses."""
    if name == "netns":
        from .netns import NetnsBackend
        return NetnsBackend(testbed, journal, here=here, peers=peers)
    if peers:
        raise TestbedError(f"backend {name}: nodes on other machines are built by the netns backend only "
                           "(--backend netns)")
    if name == "mininet":
        from .mininet import MininetBackend
        return MininetBackend(testbed, journal)
    raise TestbedError(f"backend {name!r}: one of {', '.join(BACKENDS)}")


def backend_of_journal(recorded: str | None, journal: Iterable[tuple[str, str]]) -> str:
    """The backend that built a testbed: as its state recorded it, else (state lost in a
    crash) mininet when the journal names root-namespace links, which only it makes."""
    if recorded:
        return recorded
    return "mininet" if any(kind == "link" for kind, _ in journal) else "netns"
