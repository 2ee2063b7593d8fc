"""The tunnel frame codec: round trips, limits, and fuzzed decoders whose output must re-encode
to the bytes it came from and whose refusals are ProtocolError, never anything else."""

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


def _feed_in_pieces(data: bytes, cuts: list[int]) -> tuple[list, p.FrameDecoder]:
    d = p.FrameDecoder()
    got: list = []
    pos = 0
    for c in cuts + [len(data)]:
        got += d.feed(data[pos : pos + c])
        pos += c
    return got, d


_frames = st.lists(st.tuples(st.integers(1, p.MAX_TYPE), st.integers(0, 2**32 - 1),
                             st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=10)
# garbage, or valid frames with garbage around them (pure garbage almost never passes the
# version byte, so the second half keeps the decoder busy past the first header)
_streams = st.one_of(
    st.binary(max_size=400),
    st.tuples(st.binary(max_size=20), _frames, st.binary(max_size=40)).map(
        lambda t: t[0] + b"".join(p.pack(*f) for f in t[1]) + t[2]),
)


@settings(max_examples=400, deadline=None)
@given(_streams, st.lists(st.integers(min_value=1, max_value=64), max_size=8))
def test_fuzz_decoder_garbage(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes, fed in arbitrary pieces, give what the same bytes give in one piece:
    either a ProtocolError (and never another exception), or frames that re-encode to
    exactly the bytes they came from, with only an incomplete frame left buffered."""
    try:
        whole = p.FrameDecoder().feed(data)
    except p.ProtocolError:
        with pytest.raises(p.ProtocolError):
            _feed_in_pieces(data, cuts)
        return
    got, d = _feed_in_pieces(data, cuts)
    assert got == whole  # how the bytes were cut changes nothing
    used = len(data) - d.buffered
    assert b"".join(p.pack(*f) for f in got) == data[:used]
    assert d.frames_in == len(got) and d.bytes_in == len(data)
    assert p.FrameDecoder().feed(data[used:]) == []  # the rest holds no complete frame


@settings(max_examples=300, deadline=None)
@given(_frames, st.integers(0, 2000), st.binary(min_size=1, max_size=p.HDR_SIZE - 1))
def test_fuzz_decoder_valid_then_truncated_then_short_junk(frames, cut: int, junk: bytes) -> None:
    """A truncated stream yields a prefix of its frames and waits; the rest comes out when
    the bytes arrive, and junk shorter than a header is held, not decoded or refused."""
    wire = b"".join(p.pack(*f) for f in frames)
    d = p.FrameDecoder()
    got = d.feed(wire[:cut])
    assert got == frames[: len(got)]
    assert d.buffered == min(cut, len(wire)) - sum(p.HDR_SIZE + len(f[3]) for f in got)
    rest = d.feed(wire[cut:] + junk)
    assert got + rest == frames
    assert d.buffered == len(junk)


# corruptions the frame layout (module docstring of protocol.py) forbids: (offset in the
# header, struct format, a value never valid there)
_CORRUPTIONS = [
    (4, "<B", p.PROTOCOL_VERSION + 1),  # version
    (4, "<B", 1),  # version 1 (before SEND_CLOSE)
    (5, "<B", 0),  # type 0
    (5, "<B", p.MAX_TYPE + 1),  # type beyond the last
    (6, "<H", 1),  # a flag bit, none defined
    (0, "<I", p.MAX_PAYLOAD + 1),  # length beyond MAX_PAYLOAD
]


@settings(max_examples=300, deadline=None)
@given(_frames.filter(bool), st.data(), st.sampled_from(_CORRUPTIONS),
       st.lists(st.integers(min_value=1, max_value=64), max_size=8))
def test_fuzz_one_corrupted_header_fails_the_stream_there(frames, data, corruption, cuts) -> None:
    """Valid frames with one header corrupted: the frames before it come out intact, then
    the corrupted header raises ProtocolError however the bytes were cut."""
    bad = data.draw(st.integers(0, len(frames) - 1))
    offset, fmt, value = corruption
    at = sum(p.HDR_SIZE + len(f[3]) for f in frames[:bad])
    wire = bytearray(b"".join(p.pack(*f) for f in frames))
    struct.pack_into(fmt, wire, at + offset, value)
    d = p.FrameDecoder()
    assert d.feed(bytes(wire[:at])) == frames[:bad]
    with pytest.raises(p.ProtocolError):
        d.feed(bytes(wire[at:]))
    with pytest.raises(p.ProtocolError):
        _feed_in_pieces(bytes(wire), cuts)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64),
                 st.builds(lambda t, h, m: p.encode_hello(p.Hello(t, h, m)), st.text(max_size=8),
                           st.text(max_size=8), st.text(max_size=8))))
def test_fuzz_hello_payload(data: bytes) -> None:
    """A HELLO payload is refused with ProtocolError or decodes to a Hello of this version
    that encodes back to a payload decoding to the same Hello."""
    try:
        h = p.decode_hello(data)
    except p.ProtocolError:
        return
    assert isinstance(h.token, str) and isinstance(h.host, str) and isinstance(h.mode, str)
    assert h.version == p.PROTOCOL_VERSION
    assert p.decode_hello(p.encode_hello(h)) == h


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=32),
                 st.builds(lambda a, port, rest: p.encode_peer((a, port)) + rest,
                           st.ip_addresses().map(str), st.integers(0, 65535), st.binary(max_size=8))))
def test_fuzz_peer_payload(data: bytes) -> None:
    """A peer address is refused with ProtocolError or decodes to the address whose
    encoding is exactly the bytes it was read from (offset included)."""
    try:
        peer, off = p.decode_peer(data)
    except p.ProtocolError:
        return
    assert off <= len(data)
    if peer is None:
        assert off == 3 and data[0] == 0
    else:
        assert p.encode_peer(peer) == data[:off]


@pytest.mark.slow
def test_a_quarter_million_generated_frames_round_trip_in_bounded_memory() -> None:
    """A quarter of a million random frames (every type, random ids, payloads from empty to 4 KiB),
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
    for _ in range(25):
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
    assert total == 250_000
