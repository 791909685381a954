"""In-memory stream store: the same contract as DragonflyStreamStore, in one process."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.store.base import StoreError
from services.common.store.memory import MemoryBackend, check
from services.history.store.base import (
    AppendResult,
    NewEvent,
    ReadResult,
    StoredEvent,
    StreamLimits,
)


@dataclass
class _Channel:
    epoch: str
    top: int = 0
    events: deque[StoredEvent] = field(default_factory=deque)
    idem: dict[str, tuple[int, float]] = field(default_factory=dict)
    stream_expires: float = 0.0
    meta_expires: float = 0.0


class InMemoryStreamStore:
    def __init__(self, backend: MemoryBackend, limits: StreamLimits) -> None:
        self._b = backend
        self._limits = limits
        self._channels: dict[str, _Channel] = backend.data.setdefault("streams", {})

    def _live(self, channel: str, now: float) -> _Channel | None:
        ch = self._channels.get(channel)
        if ch is None:
            return None
        if ch.meta_expires <= now:
            del self._channels[channel]
            return None
        if ch.stream_expires <= now:
            ch.events.clear()
        return ch

    async def append(
        self, channel: str, events: Sequence[NewEvent], *, new_epoch: str,
    ) -> AppendResult:
        check(self._b)
        now = time.monotonic()
        ch = self._live(channel, now)
        if ch is None:
            ch = self._channels[channel] = _Channel(epoch=new_epoch)
        offsets, dups = [], []
        trimmed = 0
        for ev in events:
            seen = ch.idem.get(ev.id)
            if seen is not None and seen[1] > now:
                offsets.append(seen[0])
                dups.append(True)
                continue
            ch.top += 1
            ch.events.append(StoredEvent(ch.top, ev.body, ev.priority))
            while len(ch.events) > self._limits.max_len:
                ch.events.popleft()
                trimmed += 1
            ch.idem[ev.id] = (ch.top, now + self._limits.idempotency_window_s)
            offsets.append(ch.top)
            dups.append(False)
        ch.stream_expires = now + self._limits.ttl_s
        ch.meta_expires = now + self._limits.meta_ttl_s
        if len(ch.idem) > 4 * self._limits.max_len:
            ch.idem = {k: v for k, v in ch.idem.items() if v[1] > now}
        return AppendResult(ch.epoch, offsets, dups, trimmed)

    async def append_many(
        self, appends: Sequence[tuple[str, Sequence[NewEvent]]], *, new_epoch: str,
    ) -> list[AppendResult | StoreError]:
        check(self._b)
        return [await self.append(channel, events, new_epoch=new_epoch) for channel, events in appends]

    async def read(
        self, channel: str, since_offset: int, limit: int, *, latest: bool = False,
    ) -> ReadResult:
        check(self._b)
        ch = self._live(channel, time.monotonic())
        if ch is None:
            return ReadResult("", 0, 0, [])
        after = [e for e in ch.events if e.offset > since_offset]
        n = max(limit, 0)  # after[-0:] would be everything
        picked = after[max(len(after) - n, 0):] if latest else after[:n]
        first = ch.events[0].offset if ch.events else 0
        return ReadResult(ch.epoch, ch.top, first, picked)
