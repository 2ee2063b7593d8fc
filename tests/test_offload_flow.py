"""The SAN's flow-control rules (testbed/offload/flow.py) alone: windows and credits as
plain ints, no sockets, frames or event loop; values worked out by hand from the windows
(SEND_WINDOW 256 KiB, RECV_WINDOW 64 KiB, SEND_CHUNK 128 KiB)."""

from __future__ import annotations

import pytest

from testbed.offload import flow
from testbed.offload.clientside import ClientConn
from testbed.offload.hostsock import TunnelTransport
from testbed.offload.protocol import ProtocolError

KIB = 1024


class DaemonSide(flow.DaemonWindows):
    __slots__ = ("cid", "rwin", "unacked")

    def __init__(self) -> None:
        self.cid = 7
        self.rwin = flow.RECV_WINDOW
        self.unacked = 0


class HostSide(flow.HostWindows):
    __slots__ = ("_credit", "_consumed", "_closed")

    def __init__(self) -> None:
        self._credit = flow.SEND_WINDOW
        self._consumed = 0
        self._closed = False


def test_the_windows_are_the_documented_sizes() -> None:
    assert (flow.SEND_WINDOW, flow.RECV_WINDOW, flow.SEND_CHUNK) == (256 * KIB, 64 * KIB, 128 * KIB)
    assert (flow.SEND_CREDIT_BATCH, flow.RECV_CREDIT_BATCH) == (128 * KIB, 32 * KIB)
    assert (flow.CLIENT_READ_PAUSE, flow.CLIENT_READ_RESUME) == (64 * KIB, 32 * KIB)


def test_both_ends_use_these_rules() -> None:
    assert issubclass(ClientConn, flow.DaemonWindows)
    assert issubclass(TunnelTransport, flow.HostWindows)


def test_daemon_credits_sent_bytes_back_by_halves_of_the_window() -> None:
    d = DaemonSide()
    assert d.client_took(100 * KIB, drained=True, sync=False) is None  # below half: no frame
    assert d.unacked == 100 * KIB
    assert d.client_took(28 * KIB, drained=True, sync=False) == 128 * KIB  # half reached
    assert d.unacked == 0


def test_daemon_credits_nothing_while_the_client_socket_holds_bytes() -> None:
    d = DaemonSide()
    assert d.client_took(200 * KIB, drained=False, sync=False) is None
    assert d.client_took(0, drained=False, sync=True) is None
    # resume_writing: the client's kernel took everything
    assert d.client_took(0, drained=True, sync=False) == 200 * KIB


def test_split_acknowledges_every_send_at_once() -> None:
    d = DaemonSide()
    assert d.client_took(10, drained=True, sync=True) == 10
    assert d.client_took(1, drained=True, sync=True) == 1
    assert d.client_took(0, drained=True, sync=True) == 0  # even an empty SEND gets its SEND_DONE
    assert d.unacked == 0


def test_a_host_sending_beyond_its_window_breaks_the_channel() -> None:
    d = DaemonSide()
    assert d.client_took(256 * KIB, drained=False, sync=False) is None  # exactly the window: fine
    with pytest.raises(ProtocolError, match="beyond the send window"):
        d.client_took(1, drained=False, sync=False)


def test_a_host_crediting_beyond_the_receive_window_breaks_the_channel() -> None:
    d = DaemonSide()
    d.rwin -= 40 * KIB  # pushed 40 KiB
    d.host_credit(40 * KIB)
    assert d.rwin == 64 * KIB
    with pytest.raises(ProtocolError, match="credit overflow on connection 7"):
        d.host_credit(1)


def test_host_sends_what_its_credit_and_one_frame_allow() -> None:
    h = HostSide()
    assert h.take_credit(200 * KIB) == 128 * KIB  # one frame at most
    assert h.take_credit(200 * KIB) == 128 * KIB  # the rest of the window
    assert h.take_credit(1) == 0  # window spent: wait for CREDIT
    h.credit_back(1000)
    assert h.take_credit(5000) == 1000
    assert h._credit == 0


def test_host_returns_receive_credit_by_halves_and_none_once_closed() -> None:
    h = HostSide()
    assert h.consumed(20 * KIB) == 0
    assert h.consumed(12 * KIB) == 32 * KIB
    assert h.consumed(31 * KIB) == 0
    h._closed = True
    assert h.consumed(10 * KIB) == 0  # nobody reads a closed connection's credit
    assert h._consumed == 41 * KIB


def test_pushed_bytes_and_credits_keep_the_window_balanced() -> None:
    """A long exchange: the daemon pushes whatever the window allows, the host consumes and
    credits back by the rule; the daemon's window never exceeds RECV_WINDOW nor goes negative,
    and every byte is pushed."""
    d, h = DaemonSide(), HostSide()
    total, pushed = 10 * 1024 * KIB, 0
    while pushed < total:
        n = min(d.rwin, 3000, total - pushed)
        assert n > 0, "the window closed for good: a credit was lost"
        d.rwin -= n
        pushed += n
        credit = h.consumed(n)
        if credit:
            d.host_credit(credit)
        assert 0 <= d.rwin <= flow.RECV_WINDOW
    assert pushed == total
