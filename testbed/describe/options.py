"""The service options as one typed, frozen value: ``ServiceOptions`` (and ``BalanceSpec``).

Every option's type, default and rule is declared here once; a value is checked where it
enters, when the object is made: from an experiment file's ``service:`` mapping
(``ServiceOptions.from_mapping``), from ``up``'s command line (``add_arguments`` declares
the flags, ``from_args`` reads them) or by a program (``ServiceOptions(...)``). What is
wrong is one line naming the option and the rule (``OptionError``). The rest of the
testbed (the service plan, the lifecycle, the runner) receives the object, never a dict.

The TCP server's own options (the overload bounds, ``poll_us``) are checked by the
daemon's rules (offload/config.py ``RULES``), the same ones its command line applies.
No I/O here: nothing is read or started.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from ..errors import SpecError, TestbedError
from ..offload import config as daemon_config

CHANNELS = ("tcp", "unix", "shm")


class OptionError(SpecError):
    """A service option with a bad value; ``name`` is the option (its field name)."""

    def __init__(self, name: str, rule: str):
        super().__init__(rule)  # the rule's line names the option
        self.name, self.rule = name, rule

    def where(self, prefix: str) -> "OptionError":
        """The same error, its line prefixed (a file and its section)."""
        e = OptionError(self.name, self.rule)
        e.args = (f"{prefix}{self.rule}",)
        return e

    def as_flag(self, flag: str) -> "OptionError":
        """The same error named by ``up``'s flag: ``--backlog: must be ...``."""
        rule = self.rule[len(self.name) + 1:] if self.rule.startswith(self.name + " ") else self.rule
        e = OptionError(self.name, self.rule)
        e.args = (f"{flag}: {rule}",)
        return e


@dataclass(frozen=True)
class BalanceSpec:
    """A balancing policy as written: ``adaptive[:key=value,...]`` or ``fixed:SPLIT``.
    Its syntax and ranges are checked when made (balance/policy.py's own parser, with
    the loosest knob); the knob's own limits when the plan picks the knob."""
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text:
            raise OptionError("balance", f"balance must be adaptive[:key=value,...] or fixed:SPLIT, not {self.text!r}")
        from ..balance.policy import parse_policy
        try:
            parse_policy(self.text, "work")
        except TestbedError as e:  # the policy parser's line names the spec and the rule
            raise OptionError("balance", str(e)) from None

    @property
    def kind(self) -> str:
        return self.text.partition(":")[0]

    @property
    def adapts(self) -> bool:
        """The split follows the load the controller sees (``adaptive``), not a fixed one."""
        return self.kind == "adaptive"

    def policy(self, knob: str) -> Any:
        """The policy for ``knob`` (``balance.policy.Policy``); TestbedError if the knob's
        limits refuse it (a CPU split must leave each side 5%)."""
        from ..balance.policy import parse_policy
        return parse_policy(self.text, knob)

    def __str__(self) -> str:
        return self.text


def _whole(lo: int, hi: int, note: str = "") -> Any:
    def check(name: str, v: object) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"{name} must be a whole number in [{lo}, {hi}]{note}, not {v!r}")
    return check


def _positive_seconds(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 3600:
        raise ValueError(f"{name} must be seconds in (0, 3600], not {v!r}")


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(name: str, v: object) -> None:
        if v is not None and v not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {v!r}")
    return check


def _daemon(rule: str) -> Any:
    """A TCP-server option, checked by the daemon's own rule ``rule``; None = its default."""
    def check(name: str, v: object) -> None:
        if v is not None:
            daemon_config.check_option(rule, v, label=name)
    return check


def _bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, not {v!r}")


def _knob(name: str, v: object) -> None:
    from ..balance.policy import KNOBS
    _one_of(KNOBS)(name, v)


def _args(name: str, v: object) -> None:
    if not isinstance(v, tuple) or not all(isinstance(a, str) for a in v):
        raise ValueError(f"{name} must be a list of strings, not {v!r}")


def _opt(default: Any, rule: Any, flag: str | None = None, help: str = "", metavar: str | None = None,
         text: Any = None) -> Any:
    """A field with its rule and, when ``up`` takes it, its flag (``text`` turns the flag's
    string into the field's type; the rule then checks the value)."""
    return field(default=default, metadata={"rule": rule, "flag": flag, "help": help,
                                            "metavar": metavar, "text": text})


def _int_text(s: str) -> Any:
    try:
        return int(s)
    except ValueError:
        return s  # the rule names it


def _float_text(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


@dataclass(frozen=True)
class ServiceOptions:
    """What the services of a mode run with (services.plan_services reads it)."""
    seed: int = _opt(1, _whole(0, 2**31 - 1), "--seed", "document root seed", "N", _int_text)
    dynamic_cost_us: int = _opt(1000, _whole(0, 10_000_000), "--dynamic-cost-us",
                                "CPU cost of /dynamic (us)", "US", _int_text)
    docroot_dirs: int = _opt(2, _whole(1, 1000))
    channel: str | None = _opt(None, _one_of(CHANNELS), "--channel",
                               "SAN channel: tcp, unix or shm (default: the topology's)", "KIND")
    ready_timeout: float = _opt(20.0, _positive_seconds)
    balance: BalanceSpec | None = _opt(None, None, "--balance",
                                       "adaptive | fixed:SPLIT (work/CPU split controller)", "POLICY",
                                       BalanceSpec)
    balance_knob: str | None = _opt(None, _knob, "--knob",
                                    "what --balance moves: work, cpu or place (default: cpu on smp, work "
                                    "otherwise; place: the TCP server answers a share of static requests "
                                    "itself)", "KNOB")
    # the paper's "No Interrupts" in the TCP server, and in the host application (0 = off)
    poll_us: int = _opt(0, _daemon("poll_us"), "--poll-us",
                        "TCP server polls every US microseconds instead of waking per event (the "
                        "paper's 'No Interrupts'; default 0 = off)", "US", _int_text)
    host_poll_us: int = _opt(0, _daemon("poll_us"), "--host-poll-us",
                             "offloaded modes: the host application polls the SAN every US microseconds "
                             "while busy (over shm, no doorbell then; default 0 = off)", "US", _int_text)
    # the TCP server's overload control (None: the daemon's defaults; offload/config.py)
    backlog: int | None = _opt(None, _daemon("backlog"), "--backlog",
                               "connections accepted but not yet given to a host, per port", "N", _int_text)
    listen_backlog: int | None = _opt(None, _daemon("listen_backlog"), "--listen-backlog",
                                      "the kernel's listen backlog on the public port", "N", _int_text)
    queue_deadline: float | None = _opt(None, _daemon("queue_deadline"), "--queue-deadline",
                                        "a connection queued longer is reset (0 = never)", "SECONDS",
                                        _float_text)
    host_conns: int | None = _opt(None, _daemon("host_conns"), "--host-conns",
                                  "push modes: connections one host may have unfinished (0 = no bound)",
                                  "N", _int_text)
    overload_control: bool | None = _opt(None, _daemon("overload_control"))
    # direct communication with the file server: the TCP server sends each file's body to
    # the client from the file server (FETCH); needs a topology with a fileserver node
    direct_files: bool = _opt(False, _bool)
    # No Data Copying: large sends leave the TCP server with MSG_ZEROCOPY from a send area
    # the host writes into (shm channel, asynchronous modes; offload/zerocopy.py)
    zero_copy: bool = _opt(False, _bool)
    tcpserver_args: tuple[str, ...] = _opt((), _args)  # benchmarks: more daemon arguments

    def __post_init__(self) -> None:
        if isinstance(self.balance, str):  # a program's "adaptive": the spec it spells
            object.__setattr__(self, "balance", BalanceSpec(self.balance))
        if isinstance(self.tcpserver_args, list):
            object.__setattr__(self, "tcpserver_args", tuple(self.tcpserver_args))
        for f in fields(self):
            rule = f.metadata["rule"]
            if rule is None:
                continue
            try:
                rule(f.name, getattr(self, f.name))
            except ValueError as e:
                raise OptionError(f.name, str(e)) from None
        if self.balance is not None and self.balance_knob is not None:
            try:
                self.balance.policy(self.balance_knob)
            except TestbedError as e:
                raise OptionError("balance", str(e)) from None

    # -- where values enter ---------------------------------------------------------------

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "") -> "ServiceOptions":
        """From typed values (YAML, a program's dict); unknown names and bad values are one
        line, prefixed with ``where`` (e.g. ``exp.yaml: service: ``)."""
        if isinstance(raw, ServiceOptions):
            return raw
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}service options are a mapping (e.g. {{dynamic_cost_us: 100}}), not {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"{where}unknown service option(s) {', '.join(map(str, unknown))}; "
                            f"known: {', '.join(sorted(known))}")
        values = {k: v for k, v in raw.items()}
        if isinstance(values.get("tcpserver_args"), list):
            values["tcpserver_args"] = tuple(values["tcpserver_args"])
        try:
            if "balance" in values and values["balance"] is not None:
                values["balance"] = BalanceSpec(values["balance"]) if not isinstance(
                    values["balance"], BalanceSpec) else values["balance"]
            return cls(**values)
        except OptionError as e:
            raise e.where(where) from None

    def with_values(self, raw: Mapping[str, Any], where: str = "") -> "ServiceOptions":
        """These options with ``raw``'s values over them (a swept ``service.KEY``), checked."""
        return ServiceOptions.from_mapping({**self.to_values(), **raw}, where)

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        """``up``'s flags for the options it takes (strings; ``from_args`` types and checks them)."""
        for f in fields(ServiceOptions):
            if f.metadata["flag"]:
                help_ = f.metadata["help"]
                if f.default not in (None, 0) and "default" not in help_:
                    help_ += f" (default {f.default})"
                p.add_argument(f.metadata["flag"], dest=f"opt_{f.name}", default=None,
                               metavar=f.metadata["metavar"], help=help_)
        for flag, (name, action, help_) in SWITCHES.items():
            p.add_argument(flag, dest=f"opt_{name}", action=action, default=None, help=help_)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServiceOptions":
        """From ``up``'s flags; a bad one is one line naming the flag and the rule."""
        values: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for f in fields(cls):
            v = getattr(args, f"opt_{f.name}", None)
            if v is None:
                continue
            flags[f.name] = f.metadata["flag"] or next(k for k, sw in SWITCHES.items() if sw[0] == f.name)
            text = f.metadata["text"]
            if isinstance(v, str) and text is not None:
                try:
                    v = text(v)
                except OptionError as e:
                    raise e.as_flag(flags[f.name]) from None
            values[f.name] = v
        try:
            return cls(**values)
        except OptionError as e:
            raise e.as_flag(flags.get(e.name, e.name)) from None

    # -- what leaves ----------------------------------------------------------------------

    def to_values(self) -> dict[str, Any]:
        """Every option as plain values (the balance spec as its text)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.balance is not None:
            out["balance"] = self.balance.text
        return out

    def changed(self) -> dict[str, Any]:
        """The options that differ from the defaults, as plain values (for listings, records)."""
        defaults = ServiceOptions().to_values()
        return {k: v for k, v in self.to_values().items() if v != defaults[k]}

    def replace(self, **changes: Any) -> "ServiceOptions":
        return replace(self, **changes)


SERVICE_KEYS = frozenset(f.name for f in fields(ServiceOptions))
# up's flags that switch an option without a value: flag -> (option, argparse action, help)
SWITCHES = {
    "--no-overload-control": ("overload_control", "store_false",
                              "the TCP server without overload control, for comparisons"),
    "--direct-files": ("direct_files", "store_true",
                       "with a file server node (multitier): the TCP server sends each file's body to "
                       "the client straight from the file server; the host sends the head"),
    "--zero-copy": ("zero_copy", "store_true",
                    "shm channel, asynchronous modes: hosts put large sends in a shared send area and "
                    "the TCP server sends them with MSG_ZEROCOPY, without copying them"),
}
