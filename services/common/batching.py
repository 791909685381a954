"""Batching of stream messages: what is queued during one event-loop iteration leaves as one message.

An `Outbox` is the bounded queue of one stream (an edge's stream to a router, a router's stream
to an edge). `put` queues a message; at the end of the iteration (one `call_soon` per batch, not
per message) what is queued leaves as one batch, within a count and a byte bound (gRPC's
default 4 MiB message limit stays far away). Batching adds no wait of its own: under light load
a batch is one message, under heavy load many.

A batch is written from that callback when the stream takes data at once (`BatchSink.try_write`:
a stream link whose socket buffer has room), so a batch costs no task wake-up. Otherwise (a full
socket buffer, or a gRPC stream, whose writes are awaited) the outbox's writer, `run`, a
coroutine the stream's owner awaits, sends it and everything queued behind it, in order, and
the callback writes again once the writer has caught up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)

BATCH_MAX_ITEMS = 512
BATCH_MAX_BYTES = 1 << 20


class BatchSink(Protocol[M_contra]):
    """Where an outbox's batches go: one open stream."""

    def try_write(self, message: M_contra) -> bool:
        """Write now if the stream takes data without waiting (True); else write nothing (False)."""
        ...

    async def send(self, message: M_contra) -> None:
        """Write, waiting (bounded) until the stream takes data; raises when the stream failed."""
        ...


class Outbox(Generic[T, M]):
    """A stream's bounded queue of messages (`T`), sent in batches (`pack` makes one message
    `M` of a batch). `put` never blocks and never writes by itself: the batch leaves at the end
    of the event-loop iteration, or later through `run` when the stream cannot take it at once.
    Nothing is written before `run` has started, nor after it has ended."""

    def __init__(self, max_items: int, size_of: Callable[[T], int], pack: Callable[[list[T]], M]) -> None:
        self._max = max_items
        self._size_of = size_of
        self._pack = pack
        self._items: deque[T] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # bound on first use (3.11's lookup costs a syscall)
        self._scheduled = False  # a flush is due at the end of this iteration
        self._sink: BatchSink[M] | None = None  # while run() runs
        self._writer_turn = False  # the writer sends what is queued: the callback leaves it alone
        self._wake: asyncio.Future[None] | None = None  # the idle writer waits on it
        self._held: M | None = None  # a batch the sink could not take at once: the writer sends it first
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> bool:
        """Queue `item`; False (nothing queued) when the outbox is full or closed."""
        if self._closed or len(self._items) >= self._max:
            return False
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._flush)
        return True

    def close(self) -> None:
        """No more puts; the writer sends what is queued, then `run` returns."""
        self._closed = True
        self._wake_writer()

    def take(self) -> list[T]:
        """The next batch: the oldest items within the count and byte bounds (at least one)."""
        items, size_of = self._items, self._size_of
        first = items.popleft()
        batch = [first]
        size = size_of(first)
        while items and len(batch) < BATCH_MAX_ITEMS and size < BATCH_MAX_BYTES:
            item = items.popleft()
            batch.append(item)
            size += size_of(item)
        return batch

    def _flush(self) -> None:
        self._scheduled = False
        sink = self._sink
        if sink is None or self._writer_turn:
            return  # run() has not started (it sends what is queued first) or is sending
        while self._items:
            message = self._pack(self.take())
            if not sink.try_write(message):
                self._held = message
                self._writer_turn = True
                self._wake_writer()
                return

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def run(self, sink: BatchSink[M]) -> None:
        """Send this outbox's batches to `sink` until it is closed and empty (then return), or
        until sending fails (then raise). Cancelling it stops the writes; what is queued stays."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._sink = sink
        try:
            while True:
                if self._writer_turn or (self._items and (self._closed or not self._scheduled)):
                    await self._send_queued(sink)  # held back, queued before run, or closing
                elif self._closed:
                    return
                else:
                    self._wake = self._loop.create_future()
                    try:
                        await self._wake
                    finally:
                        self._wake = None
        finally:
            self._sink = None
            self._writer_turn = False

    async def _send_queued(self, sink: BatchSink[M]) -> None:
        """The writer's turn: the batch held back and everything queued behind it, in order."""
        self._writer_turn = True
        while True:
            message, self._held = self._held, None
            if message is None:
                if not self._items:
                    break
                message = self._pack(self.take())
            await sink.send(message)
        self._writer_turn = False
