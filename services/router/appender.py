"""Appends to history, coalesced across channels: one AppendBatch call per event-loop iteration.

Each channel's pipeline still has at most one append in flight (that is what orders it); what
the pipelines of all channels ask for in one loop iteration leaves together in one call, and
history runs it as one store round trip. A batch leaves on the next iteration, so coalescing
adds no wait; a batch over `max_events` is split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryCallError
from services.common.tasks import cancel_and_wait

_Item = tuple[str, Sequence[hpb.Event], "asyncio.Future[hpb.AppendResponse]"]


class BatchAppendClient(Protocol):
    """What the appender needs of history (HistoryClient in production)."""

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]: ...


class Appender:
    def __init__(self, history: BatchAppendClient, *, max_events: int) -> None:
        self._history = history
        self._max_events = max_events
        self._queued: list[_Item] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def append(self, channel: str, events: Sequence[hpb.Event]) -> hpb.AppendResponse:
        """Append one channel's events atomically. Raises HistoryCallError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[hpb.AppendResponse] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((channel, events, fut))
        return await fut

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        batch: list[_Item] = []
        size = 0
        for item in queued:
            if batch and size + len(item[1]) > self._max_events:
                self._send(batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item[1])
        if batch:
            self._send(batch)

    def _send(self, batch: list[_Item]) -> None:
        task = asyncio.create_task(self._call(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for task in list(self._tasks):
            await cancel_and_wait(task)
