"""Length-prefixed frames over TCP: the transport of the edge <-> router stream links.

A frame is a 4-byte big-endian length and that many bytes (one serialized protobuf message).
`FrameProtocol` is an `asyncio.Protocol`: it splits frames out of `data_received` buffers, with
no task, coroutine or copy per frame beyond the frame itself, and writes each frame with one
`transport.write`. Frames are read with `read_frames` (the next ones, awaited) or handed to a
receiver by `serve` as they arrive, inside `data_received`: the stream links use `serve`, so a
frame is acted on in the loop iteration that read it, not one iteration later when a reader
task wakes (a connection storm's attaches wait on that twice per edge and router).

Bounds and liveness, all without a task of their own (one timer handle per connection):
- a frame longer than `max_frame_bytes` fails the connection (it is aborted, never buffered);
- at most `inbox_max` frames wait for `read_frames`; past that the socket stops being read
  (`pause_reading`) until the reader has taken them, so a slow reader slows its peer down
  (a receiver given to `serve` must not block: it is called from `data_received`);
- every `heartbeat_s` the protocol writes `heartbeat` (a message the reader ignores) if nothing
  else was written meanwhile, and fails the connection when nothing at all was read for
  `idle_timeout_s`: a dead or stalled peer is noticed within `idle_timeout_s + heartbeat_s`;
- `drain` waits (bounded) while the transport's write buffer is over its high-water mark.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

HEADER = struct.Struct(">I")


class SupportsSerialize(Protocol):
    def SerializeToString(self) -> bytes: ...


class LinkClosedError(ConnectionError):
    """The link failed: idle past its timeout, an oversize frame, a reset, or closed by us."""


class FrameTooLargeError(LinkClosedError):
    """The peer announced a frame longer than the maximum."""


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class FrameProtocol(asyncio.Protocol):
    def __init__(self, *, max_frame_bytes: int, heartbeat: bytes, heartbeat_s: float,
                 idle_timeout_s: float, inbox_max: int = 1024,
                 on_open: Callable[[FrameProtocol], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._max = max_frame_bytes
        self._heartbeat = frame(heartbeat)
        self._heartbeat_s = heartbeat_s
        self._idle_ticks_max = max(1, round(idle_timeout_s / heartbeat_s))
        self.idle_timeout_s = idle_timeout_s
        self._inbox_max = inbox_max
        self._on_open = on_open
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._inbox: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._read_since_tick = self._written_since_tick = False
        self._idle_ticks = 0
        self._timer: asyncio.TimerHandle | None = None
        self._error: LinkClosedError | None = None
        self._receiver: Callable[[list[bytes]], None] | None = None  # while serve() runs
        self._raised: Exception | None = None  # what the receiver raised
        self._eof = False
        self.peer = ""

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = self._transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._timer = self._loop.call_later(self._heartbeat_s, self._tick)
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._read_since_tick = True
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        receiver = self._receiver
        frames: list[bytes] | deque[bytes] = [] if receiver is not None else self._inbox
        while end - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self._max:
                self._fail(FrameTooLargeError(f"frame of {size} bytes over the {self._max} limit"))
                return
            if pos + 4 + size > end:
                break
            frames.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        if not pos:
            return
        del buf[:pos]
        if receiver is not None:
            self._hand(receiver, cast(list[bytes], frames))
            return
        self._wake()
        if len(self._inbox) >= self._inbox_max and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None and exc is not None:
            self._error = LinkClosedError(f"connection lost: {exc}")
        self._eof = True
        if self._timer is not None:
            self._timer.cancel()
        self._wake()
        self._resume_writers()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._resume_writers()

    # ---- reader and writer -----------------------------------------------------------------

    async def read_frames(self) -> list[bytes]:
        """Every frame received and not yet read, waiting for at least one; [] once the peer
        has closed cleanly. Raises LinkClosedError on a failed link."""
        while not self._inbox:
            if self._error is not None:
                raise self._error
            if self._eof:
                return []
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames = list(self._inbox)
        self._inbox.clear()
        self._resume_reading()
        return frames

    async def serve(self, receiver: Callable[[list[bytes]], None]) -> None:
        """Hand the frames to `receiver` as they arrive (those already received first), from
        `data_received`, until the link ends: returns once the peer has closed cleanly, raises
        LinkClosedError when the link failed, and raises what `receiver` raised (the link is
        then aborted). `receiver` must not block. Once this returns or is cancelled, frames are
        kept for `read_frames` again."""
        try:
            if self._inbox:
                frames = list(self._inbox)
                self._inbox.clear()
                self._resume_reading()
                self._hand(receiver, frames)
            self._receiver = receiver
            while True:
                if self._raised is not None:
                    raise self._raised
                if self._error is not None:
                    raise self._error
                if self._eof:
                    return
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._receiver = None

    def write(self, payload: bytes) -> None:
        """Queue one frame (one transport write). Raises LinkClosedError once the link is down."""
        if self._eof or self._transport is None or self._transport.is_closing():
            raise self._error or LinkClosedError("link closed")
        self._transport.write(HEADER.pack(len(payload)) + payload)
        self._written_since_tick = True

    @property
    def writable(self) -> bool:
        """Up, and the write buffer is below its high-water mark: a write needs no drain."""
        return not (self._writing_paused or self._eof or self._transport is None
                    or self._transport.is_closing())

    async def drain(self) -> None:
        """Wait while the write buffer is full, at most `idle_timeout_s`: a peer that does not
        read for that long is as good as dead. Raises LinkClosedError or TimeoutError."""
        if not self._writing_paused:
            return
        async with asyncio.timeout(self.idle_timeout_s):
            while self._writing_paused and not self._eof:
                if self._drained is None:
                    self._drained = self._loop.create_future()
                await asyncio.shield(self._drained)
        if self._eof:
            raise self._error or LinkClosedError("link closed")

    def close(self) -> None:
        """Close after what is written has been sent."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---- internals -------------------------------------------------------------------------

    def _tick(self) -> None:
        self._idle_ticks = 0 if self._read_since_tick else self._idle_ticks + 1
        self._read_since_tick = False
        if self._idle_ticks >= self._idle_ticks_max:
            self._fail(LinkClosedError(f"nothing read for {self.idle_timeout_s}s"))
            return
        if not self._written_since_tick and not self._writing_paused and self._transport is not None:
            self._transport.write(self._heartbeat)
        self._written_since_tick = False
        self._timer = self._loop.call_later(self._heartbeat_s, self._tick)

    def _fail(self, error: LinkClosedError) -> None:
        if self._error is None:
            self._error = error  # raised once the frames before the failure are read
        self._wake()
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows on the next loop iteration

    def _hand(self, receiver: Callable[[list[bytes]], None], frames: list[bytes]) -> None:
        try:
            receiver(frames)
        except Exception as e:  # serve() raises it; the link is done
            self._raised = e
            self._fail(LinkClosedError(f"the frame receiver failed: {e!r}"))

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._eof:
            self._reading_paused = False
            self._transport.resume_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume_writers(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)


class FrameSink:
    """A stream link as an outbox's sink (services/common/batching.py): a protobuf message per
    frame, written at once while the socket buffer has room, else written and drained."""

    __slots__ = ("_conn",)

    def __init__(self, conn: FrameProtocol) -> None:
        self._conn = conn

    def try_write(self, message: SupportsSerialize) -> bool:
        conn = self._conn
        if not conn.writable:
            return False
        conn.write(message.SerializeToString())
        return True

    async def send(self, message: SupportsSerialize) -> None:
        self._conn.write(message.SerializeToString())
        await self._conn.drain()
