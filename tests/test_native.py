"""The native fast path against the pure-Python reference: same frames, same ring bytes.

The compiled ``_native`` module (built by scripts/setup.sh) replaces the frame decoder's
per-frame loop and the shm ring copies; these tests feed both paths the same input and
compare what comes out, byte for byte, including refusals. Without the module they skip,
and ``TCPS_NATIVE=0`` is checked to force the Python path.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.offload import native, protocol, shmring, shmtransport

ROOT = Path(__file__).resolve().parent.parent
N = native.load()
needs_native = pytest.mark.skipif(N is None, reason="the native module is not built (scripts/setup.sh)")

frames_st = st.lists(st.tuples(st.integers(1, protocol.MAX_TYPE), st.integers(0, 2**32 - 1),
                               st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=40)


def _decode_all(feed, chunks: list[bytes]) -> tuple[list, str | None]:
    out: list = []
    try:
        for c in chunks:
            out += feed(c)
    except protocol.ProtocolError as e:
        return out, str(e)
    return out, None


def _cuts(wire: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({min(c, len(wire)) for c in cuts})
    return [wire[a:b] for a, b in zip([0, *at], [*at, len(wire)])]


@needs_native
@settings(max_examples=300, deadline=None)
@given(frames=frames_st, cuts=st.lists(st.integers(0, 20_000), max_size=8), junk=st.binary(max_size=40))
def test_native_and_python_decoders_give_the_same_frames_and_errors(frames, cuts, junk) -> None:
    wire = b"".join(protocol.pack(*f) for f in frames) + junk
    nat, py = protocol.FrameDecoder(), protocol.FrameDecoder()
    got_n = _decode_all(nat.feed, _cuts(wire, cuts))
    got_p = _decode_all(py._feed_python, _cuts(wire, cuts))
    assert got_n == got_p
    assert [type(f[3]) for f in got_n[0]] == [bytes] * len(got_n[0])
    if got_n[1] is None:
        assert (nat.buffered, nat.frames_in, nat.bytes_in) == (py.buffered, py.frames_in, py.bytes_in)
    if not junk:
        assert got_n == (frames, None)


@needs_native
@pytest.mark.parametrize("hdr", [
    struct.pack("<IBBHII", 0, protocol.PROTOCOL_VERSION + 1, protocol.SEND, 0, 1, 0),
    struct.pack("<IBBHII", 0, protocol.PROTOCOL_VERSION, 0, 0, 1, 0),
    struct.pack("<IBBHII", 0, protocol.PROTOCOL_VERSION, 99, 0, 1, 0),
    struct.pack("<IBBHII", 0, protocol.PROTOCOL_VERSION, protocol.SEND, 4, 1, 0),
    struct.pack("<IBBHII", protocol.MAX_PAYLOAD + 1, protocol.PROTOCOL_VERSION, protocol.SEND, 0, 1, 0),
])
def test_each_bad_header_gets_the_python_decoders_message(hdr: bytes) -> None:
    good = protocol.pack(protocol.PING, 0, 7)
    with pytest.raises(protocol.ProtocolError) as nat:
        protocol.FrameDecoder().feed(good + hdr)
    with pytest.raises(protocol.ProtocolError) as py:
        protocol.FrameDecoder()._feed_python(good + hdr)
    assert str(nat.value) == str(py.value)


class _Ring:
    """One direction of a ring file's layout, in an anonymous mapping."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.mm = mmap.mmap(-1, shmring.HEADER + 2 * cap)
        self.w = memoryview(self.mm)[:shmring.HEADER].cast("Q")
        c = shmring.CONTROL[0]
        self.head_at, self.tail_at = c + shmring.HEAD * 8, c + shmring.TAIL * 8
        self.base = shmring.HEADER


def _python_put(r: _Ring, head: int, data: bytes) -> int:
    """shmring's reference copy (ShmTransport._put_python) on a bare ring."""
    t = shmring.ShmTransport.__new__(shmring.ShmTransport)
    t._w, t._mm, t._cap, t._mask, t._tx_base = r.w, r.mm, r.cap, r.cap - 1, r.base
    t._tx_head, t._tx_head_i, t._tx_tail_i = head, r.head_at // 8, r.tail_at // 8
    return t._put_python(memoryview(data))


@needs_native
@settings(max_examples=200, deadline=None)
@given(writes=st.lists(st.tuples(st.binary(min_size=1, max_size=3000), st.integers(0, 3000)), max_size=30))
def test_native_and_python_rings_hold_the_same_bytes(writes) -> None:
    """Writes and partial reads through a 4 KiB ring, wrapping: the native put leaves the
    ring exactly as the Python one does, and the native take returns the bytes in order."""
    a, b = _Ring(4096), _Ring(4096)
    head = tail = 0
    sent = bytearray()
    got = bytearray()
    for data, consume in writes:
        n = N.put(a.mm, a.head_at, a.tail_at, a.base, a.cap, head, data)
        assert n == _python_put(b, head, data)
        head += n
        sent += data[:n]
        assert a.mm[:] == b.mm[:]
        if consume:  # the reader takes everything; the writer sees the space
            out = N.take(a.mm, a.head_at, a.tail_at, a.base, a.cap, tail)
            got += out
            tail += len(out)
            b.w[b.tail_at // 8] = tail
            assert a.w[a.tail_at // 8] == tail
    got += N.take(a.mm, a.head_at, a.tail_at, a.base, a.cap, tail)
    assert got == sent


@needs_native
def test_native_ring_refuses_corrupt_counters() -> None:
    r = _Ring(4096)
    r.w[r.tail_at // 8] = 10_000  # a tail beyond our head
    assert N.put(r.mm, r.head_at, r.tail_at, r.base, r.cap, 0, b"x") == -1
    r.w[r.head_at // 8] = 5  # a head behind the reader's tail would replay bytes
    assert N.take(r.mm, r.head_at, r.tail_at, r.base, r.cap, 100) is None
    with pytest.raises(ValueError):
        N.put(r.mm, r.head_at, r.tail_at, r.base, 1 << 20, 0, b"x")  # outside the mapping


def test_tcps_native_0_forces_the_python_path() -> None:
    code = "from testbed.offload import native, protocol, shmring, shmtransport; " \
           "print(native.NATIVE, protocol._decode, shmtransport._put_native)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TCPS_NATIVE": "0"},
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "None", "None"]
