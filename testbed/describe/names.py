"""The names of what a testbed makes, in one place: namespaces, cgroups, shm channels.

Everything carries ``PREFIX`` and the testbed's name (which holds no '-', see state.NAME),
so teardown and ``clean`` find a testbed's objects by exact name or by the prefix
``tcps-<testbed>-``, never by a pattern that could match another testbed's.
"""

from __future__ import annotations

from .. import PREFIX


def netns_name(testbed: str, key: str) -> str:
    """A node's network namespace (nodes that share a namespace share its key)."""
    return f"{PREFIX}-{testbed}-{key}"


def switch_netns_name(testbed: str, link: str) -> str:
    """The namespace holding a LAN's bridge (netns backend)."""
    return f"{PREFIX}-{testbed}-sw-{link}"


def cgroup_name(testbed: str, node: str | None = None) -> str:
    """The testbed's parent cgroup, or one node's group under it (every hierarchy used)."""
    return f"{PREFIX}-{testbed}" + (f"/{node}" if node else "")


def shm_channel_name(testbed: str, front: str) -> str:
    """The shm SAN channel of a front node: its socket and rings are /dev/shm/<this>*."""
    return f"{PREFIX}-{testbed}-{front}"


def shm_prefix(testbed: str) -> str:
    """What every /dev/shm file of the testbed starts with."""
    return f"{PREFIX}-{testbed}-"
