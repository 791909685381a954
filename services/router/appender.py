"""Appends to history, coalesced across channels: group commit of batches.

Each channel's pipeline still has at most one append in flight (that is what orders it). What the
pipelines of all channels ask for leaves together in one AppendBatch call, which history runs as
one store round trip. At most `max_inflight` calls are under way: an append that finds a free
slot leaves on the next event-loop iteration (no wait of its own); the ones that arrive while
every slot is busy queue up and leave together as soon as a call returns. Under light load a
call carries one append, under heavy load many, so the cost per message falls as load rises.
A batch over `max_events` is split.

Where a batch goes is the `BatchAppendClient`: `DirectAppends` stores it from this process with
history's own write path (`append_via = "store"`, the default), `HistoryClient` sends it to a
history node (`append_via = "history"`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryCallError, HistoryUnavailableError, call_error
from services.common.tasks import cancel_and_wait
from services.history.writer import StreamWriter

log = structlog.get_logger("switchboard.router")

Outcome = hpb.AppendResponse | HistoryCallError
AppendDone = Callable[[Outcome], None]
_Item = tuple[str, Sequence[hpb.Event], AppendDone]


class BatchAppendClient(Protocol):
    """What the appender needs of history (HistoryClient in production)."""

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]: ...


class DirectAppends:
    """The owning router stores its batches itself, with history's write path and Lua script:
    no history hop on a durable publish. Failures come back per append, as from history."""

    def __init__(self, writer: StreamWriter, *, timeout_s: float) -> None:
        self._writer = writer
        self._timeout_s = timeout_s

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]:
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await self._writer.append_many(appends)  # no AppendBatch messages
        except TimeoutError:  # the store stalls: retryable, and the retry is idempotent by id
            return [HistoryUnavailableError(f"store append timed out after {self._timeout_s}s")
                    for _ in appends]
        return [r if isinstance(r, hpb.AppendResponse) else call_error(*r) for r in results]


class Appender:
    """Group commit. `submit` takes a callback, not a future: the publisher's pipelines are
    callbacks too, so a publish costs no task and no future on the owner's path."""

    def __init__(self, history: BatchAppendClient, *, max_events: int, max_inflight: int = 2) -> None:
        self._history = history
        self._max_events = max_events
        self._max_inflight = max_inflight
        self._queued: deque[_Item] = deque()
        self._flush_scheduled = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, channel: str, events: Sequence[hpb.Event], done: AppendDone) -> None:
        """Append one channel's events atomically; `done` gets the response or a
        HistoryCallError, exactly once, from the event loop (never from inside submit)."""
        loop = asyncio.get_running_loop()
        if self._closed:
            loop.call_soon(done, HistoryUnavailableError("router shutting down"))
            return
        self._queued.append((channel, events, done))
        if not self._flush_scheduled and len(self._tasks) < self._max_inflight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def append(self, channel: str, events: Sequence[hpb.Event]) -> hpb.AppendResponse:
        """`submit`, awaited. Raises HistoryCallError."""
        fut: asyncio.Future[hpb.AppendResponse] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome) -> None:
            if fut.done():
                return
            if isinstance(outcome, HistoryCallError):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

        self.submit(channel, events, done)
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queued and len(self._tasks) < self._max_inflight:
            batch: list[_Item] = []
            size = 0
            while self._queued and (not batch or size + len(self._queued[0][1]) <= self._max_events):
                item = self._queued.popleft()
                batch.append(item)
                size += len(item[1])
            task = asyncio.create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._call_done)

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._queued and not self._flush_scheduled:
            self._flush()  # what queued while every slot was busy leaves now, together

    async def _call(self, batch: list[_Item]) -> None:
        answered = 0
        try:
            try:
                outcomes: Sequence[Outcome] = await self._history.append_batch(
                    [(c, evs) for c, evs, _ in batch])
            except HistoryCallError as e:
                outcomes = [e] * len(batch)
            for (_, _, done), outcome in zip(batch, outcomes, strict=True):
                answered += 1
                _answer(done, outcome)
        except BaseException as e:  # cancelled (shutdown) or a bug: the rest still get an answer
            failed = (HistoryUnavailableError("router shutting down")
                      if isinstance(e, asyncio.CancelledError)
                      else HistoryCallError(f"append batch failed: {e!r}"))
            for _, _, done in batch[answered:]:
                _answer(done, failed)
            raise

    async def aclose(self) -> None:
        """Answer what is queued with an error, cancel the calls under way (their appends are
        answered too); later submits are answered at once."""
        self._closed = True
        queued, self._queued = self._queued, deque()
        for _, _, done in queued:
            _answer(done, HistoryUnavailableError("router shutting down"))
        for task in list(self._tasks):
            await cancel_and_wait(task)


def _answer(done: AppendDone, outcome: Outcome) -> None:
    try:
        done(outcome)
    except Exception:  # one caller's bug must not leave the batch's other appends unanswered
        log.exception("append_callback_failed")
