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
from collections.abc import Sequence
from typing import Protocol

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryCallError, HistoryUnavailableError, outcome_of
from services.common.tasks import cancel_and_wait
from services.history.writer import StreamWriter

_Item = tuple[str, Sequence[hpb.Event], "asyncio.Future[hpb.AppendResponse]"]


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
        request = hpb.AppendBatchRequest(
            appends=[hpb.AppendRequest(channel=c, events=events) for c, events in appends])
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._writer.append_batch_answering_errors(request)
        except TimeoutError:  # the store stalls: retryable, and the retry is idempotent by id
            return [HistoryUnavailableError(f"store append timed out after {self._timeout_s}s")
                    for _ in appends]
        return [outcome_of(o) for o in response.results]


class Appender:
    def __init__(self, history: BatchAppendClient, *, max_events: int, max_inflight: int = 2) -> None:
        self._history = history
        self._max_events = max_events
        self._max_inflight = max_inflight
        self._queued: list[_Item] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, channel: str, events: Sequence[hpb.Event]) -> hpb.AppendResponse:
        """Append one channel's events atomically. Raises HistoryCallError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[hpb.AppendResponse] = loop.create_future()
        self._queued.append((channel, events, fut))
        if not self._flush_scheduled and len(self._tasks) < self._max_inflight:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queued and len(self._tasks) < self._max_inflight:
            batch: list[_Item] = []
            size = 0
            while self._queued and (not batch or size + len(self._queued[0][1]) <= self._max_events):
                item = self._queued.pop(0)
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
        try:
            outcomes = await self._history.append_batch([(c, evs) for c, evs, _ in batch])
        except HistoryCallError as e:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        except BaseException as e:
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(HistoryCallError(f"append batch failed: {e!r}"))
            raise
        for (_, _, fut), outcome in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, HistoryCallError):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def aclose(self) -> None:
        queued, self._queued = self._queued, []
        for _, _, fut in queued:
            if not fut.done():
                fut.set_exception(HistoryCallError("router shutting down"))
        for task in list(self._tasks):
            await cancel_and_wait(task)
