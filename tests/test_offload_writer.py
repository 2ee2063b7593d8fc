"""The frame writer both ends share (testbed/offload/writer.py): frames emitted during one
loop iteration leave in one write, a CLOSE right behind the same connection's SEND
becomes one SEND_CLOSE, and nothing leaves once the channel is dead."""

from __future__ import annotations

import asyncio

from testbed.offload import protocol as p
from testbed.offload.writer import FrameWriter


class Sink:
    """Where the writer's bytes land: the transport end of the contract, nothing else."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


async def _writer() -> tuple[FrameWriter, Sink]:
    w = FrameWriter()
    w.init_writer(asyncio.get_running_loop())
    sink = Sink()
    w.transport = sink  # type: ignore[assignment]
    return w, sink


def _frames(sink: Sink) -> list:
    d = p.FrameDecoder()
    return [f for data in sink.writes for f in d.feed(data)]


def test_frames_of_one_iteration_leave_in_one_write() -> None:
    async def go() -> None:
        w, sink = await _writer()
        w.emit(p.DATA, 1, 0, b"abc")
        w.emit(p.CREDIT, 2, 4096)
        w.emit(p.EOF, 1, 0)
        assert sink.writes == []  # nothing before the loop turns
        await asyncio.sleep(0)
        assert len(sink.writes) == 1
        assert _frames(sink) == [(p.DATA, 1, 0, b"abc"), (p.CREDIT, 2, 4096, b""), (p.EOF, 1, 0, b"")]
        assert w.bytes_out == 3 * p.HDR_SIZE + 3 and w.frames_out == 3
        assert (w.sent[p.DATA], w.sent[p.CREDIT], w.sent[p.EOF]) == (1, 1, 1)
        w.emit(p.PING, 0, 9)
        await asyncio.sleep(0)
        assert len(sink.writes) == 2  # the next iteration: its own write
    asyncio.run(go())


def test_close_right_behind_its_send_is_one_send_close() -> None:
    async def go() -> None:
        w, sink = await _writer()
        w.emit_send(5, b"response")
        w.emit_close(5)
        await asyncio.sleep(0)
        assert _frames(sink) == [(p.SEND_CLOSE, 5, 0, b"response")]
        assert (w.sent[p.SEND], w.sent[p.SEND_CLOSE], w.sent[p.CLOSE]) == (0, 1, 0)
    asyncio.run(go())


def test_close_not_right_behind_its_send_stays_a_close() -> None:
    async def go() -> None:
        w, sink = await _writer()
        w.emit_send(5, b"a")
        w.emit(p.RECV_REQ, 6, 100)  # another frame in between
        w.emit_close(5)
        w.emit_send(7, b"b")
        w.emit_close(8)  # another connection's close
        await asyncio.sleep(0)
        w.emit_close(7)  # after a flush: the SEND has left already
        await asyncio.sleep(0)
        assert _frames(sink) == [(p.SEND, 5, 0, b"a"), (p.RECV_REQ, 6, 100, b""), (p.CLOSE, 5, 0, b""),
                                 (p.SEND, 7, 0, b"b"), (p.CLOSE, 8, 0, b""), (p.CLOSE, 7, 0, b"")]
    asyncio.run(go())


def test_nothing_leaves_a_dead_channel() -> None:
    async def go() -> None:
        w, sink = await _writer()
        w.emit(p.DATA, 1, 0, b"x")
        w.dead = True
        await asyncio.sleep(0)
        w.emit(p.DATA, 1, 0, b"y")
        await asyncio.sleep(0)
        assert sink.writes == [] and w.out == []
    asyncio.run(go())
