"""The tunnel frame codec: round trips, limits, and a fuzzed decoder that never hangs or crashes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.offload import protocol as p


def test_header_is_16_bytes_little_endian() -> None:
    f = p.pack(p.SEND, conn=7, arg=9, payload=b"abc")
    assert len(f) == p.HDR_SIZE + 3
    assert struct.unpack("<IBBHII", f[:16]) == (3, p.PROTOCOL_VERSION, p.SEND, 0, 7, 9)


def test_round_trip_split_anywhere() -> None:
    frames = [(p.DATA, 1, 0, b"x" * 1000), (p.SEND, 2, 5, b""), (p.CREDIT, 3, 4096, b""),
              (p.CONN_NEW, 4, 80, p.encode_peer(("10.77.0.2", 5555)) + b"GET /")]
    wire = b"".join(p.pack(t, c, a, pl) for t, c, a, pl in frames)
    for cut in range(0, len(wire), 7):
        d = p.FrameDecoder()
        got = d.feed(wire[:cut]) + d.feed(wire[cut:])
        assert got == frames
        assert d.buffered == 0
    d = p.FrameDecoder()
    got = [f for i in range(len(wire)) for f in d.feed(wire[i : i + 1])]
    assert got == frames and d.frames_in == 4


def test_max_payload_enforced_both_ways() -> None:
    with pytest.raises(p.ProtocolError):
        p.pack(p.SEND, 1, 0, b"x" * (p.MAX_PAYLOAD + 1))
    bad = struct.pack("<IBBHII", p.MAX_PAYLOAD + 1, p.PROTOCOL_VERSION, p.SEND, 0, 1, 0)
    with pytest.raises(p.ProtocolError, match="MAX_PAYLOAD"):
        p.FrameDecoder().feed(bad)
    ok = p.pack(p.SEND, 1, 0, b"y" * p.MAX_PAYLOAD)
    assert p.FrameDecoder().feed(ok)[0][3] == b"y" * p.MAX_PAYLOAD


@pytest.mark.parametrize("hdr", [
    struct.pack("<IBBHII", 0, p.PROTOCOL_VERSION + 1, p.SEND, 0, 1, 0),  # wrong version
    struct.pack("<IBBHII", 0, 1, p.SEND, 0, 1, 0),  # version 1 (before SEND_CLOSE)
    struct.pack("<IBBHII", 0, p.PROTOCOL_VERSION, 0, 0, 1, 0),  # type 0
    struct.pack("<IBBHII", 0, p.PROTOCOL_VERSION, 99, 0, 1, 0),  # unknown type
    struct.pack("<IBBHII", 0, p.PROTOCOL_VERSION, p.SEND, 4, 1, 0),  # undefined flags
])
def test_bad_headers_raise(hdr: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.FrameDecoder().feed(hdr)


def test_hello_and_peer_helpers() -> None:
    h = p.Hello(token="t0k", host="host1", mode="split")
    assert p.decode_hello(p.encode_hello(h)) == h
    for bad in (b"", b"{", b"[]", b'{"token": 1}', b"\xff\xfe",
                b'{"token":"a","host":"b","mode":"c","version":99}',
                b'{"token":"a","host":"b","mode":"c","version":1e400}', b"[" * 100_000):
        with pytest.raises(p.ProtocolError):
            p.decode_hello(bad)
    for peer in (("10.77.0.2", 80), ("::1", 443)):
        raw = p.encode_peer(peer) + b"rest"
        got, off = p.decode_peer(raw)
        assert got == peer and raw[off:] == b"rest"
    assert p.decode_peer(p.encode_peer(None)) == (None, 3)
    for bad in (b"", b"\x05abcdefgh", b"\x04ab"):
        with pytest.raises(p.ProtocolError):
            p.decode_peer(bad)


def test_type_names_cover_every_type() -> None:
    assert len(p.TYPE_NAMES) == p.MAX_TYPE
    assert all(getattr(p, name) == num for num, name in p.TYPE_NAMES.items())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=64), max_size=8))
def test_fuzz_decoder_garbage(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes, fed in arbitrary pieces: frames or a clean ProtocolError, nothing else."""
    d = p.FrameDecoder()
    pos = 0
    try:
        for c in cuts + [len(data)]:
            for ftype, conn, arg, payload in d.feed(data[pos : pos + c]):
                assert 1 <= ftype <= p.MAX_TYPE and len(payload) <= p.MAX_PAYLOAD
            pos += c
    except p.ProtocolError:
        return
    assert d.buffered <= p.HDR_SIZE + p.MAX_PAYLOAD


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, p.MAX_TYPE), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=10),
       st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_fuzz_decoder_valid_then_truncated_or_corrupted(frames, cut: int, junk: bytes) -> None:
    wire = b"".join(p.pack(*f) for f in frames)
    d = p.FrameDecoder()
    got = d.feed(wire[:cut])
    assert got == frames[: len(got)]  # a truncated stream yields a prefix and waits
    try:
        d.feed(wire[cut:] + junk)  # then garbage after valid frames: at worst a ProtocolError
    except p.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_payload_helpers(data: bytes) -> None:
    for fn in (p.decode_hello, p.decode_peer):
        try:
            fn(data)
        except p.ProtocolError:
            pass


@pytest.mark.slow
def test_a_million_generated_frames_round_trip_in_bounded_memory() -> None:
    """One million random frames (every type, random ids, payloads from empty to 4 KiB),
    fed in random pieces from one byte to 64 KiB: every frame comes out as it went in, and
    the decoder never holds more than one frame's worth."""
    import random
    import tracemalloc
    rng = random.Random(16)
    d = p.FrameDecoder()
    sizes = (0, 0, 1, 7, 64, 300, 1460, 4096)
    pieces = (1, 3, 15, 16, 17, 100, 1500, 4096, 65536)
    total = 0
    tracemalloc.start()
    for _ in range(100):
        frames = [(rng.randint(1, p.MAX_TYPE), rng.getrandbits(32), rng.getrandbits(32),
                   rng.randbytes(rng.choice(sizes))) for _ in range(10_000)]
        wire = b"".join(p.pack(*f) for f in frames)
        got: list = []
        pos = 0
        while pos < len(wire):
            step = rng.choice(pieces)
            got += d.feed(wire[pos:pos + step])
            pos += step
            assert d.buffered <= p.HDR_SIZE + p.MAX_PAYLOAD
        assert got == frames
        total += len(got)
        del frames, wire, got
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 64 * 1024 * 1024, peak  # one batch's frames and wire at most
    tracemalloc.stop()
    assert total == 1_000_000
