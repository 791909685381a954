"""The stream store: per-channel offsets, epochs and bounded event streams.

Contract (both adapters, proven by tests/integration/test_stream_store_contract.py):
- `append` is atomic per call: each event either gets the next offset of the channel, or, when
  its id was appended within the idempotency window, the offset it got the first time
  (`duplicate=True`). Offsets start at 1 and increase by 1 per stored event; the epoch is
  created with the channel's first append (from `new_epoch`) and changes only when the channel's
  metadata is lost (expiry or a store that lost its data).
- Streams keep at most `max_len` events and expire after `ttl_s` without appends; the
  metadata (offset counter, epoch) lives `meta_ttl_s`, so a reader can tell "trimmed" from
  "never existed".
- `read` returns events with offset > since_offset in order, at most `limit`; with `latest`,
  the newest `limit` of them.
- Unreachable store: StoreUnavailableError; nothing is half-applied by a failed call.
- `append_many` appends to several channels in one store round trip: each channel's append is
  atomic and independent of the others. When the round trip itself fails, some channels may
  have been stored and others not: callers retry with the same event ids (idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.store.base import StoreError


@dataclass(frozen=True, slots=True)
class NewEvent:
    id: str
    body: bytes
    priority: int = 2


@dataclass(frozen=True, slots=True)
class AppendResult:
    epoch: str
    offsets: list[int]
    duplicates: list[bool]
    trimmed: int = 0    # older events dropped by this append to keep the stream at max_len


@dataclass(frozen=True, slots=True)
class StoredEvent:
    offset: int
    body: bytes
    priority: int


@dataclass(frozen=True, slots=True)
class ReadResult:
    epoch: str          # "" when the channel has no metadata (never written or fully expired)
    top_offset: int
    first_offset: int   # oldest offset still held; 0 when the stream is empty
    events: list[StoredEvent]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_len: int
    ttl_s: float
    meta_ttl_s: float
    idempotency_window_s: float


class StreamStore(Protocol):
    async def append(
        self, channel: str, events: Sequence[NewEvent], *, new_epoch: str,
    ) -> AppendResult:
        """Append in order, atomically. Raises StoreUnavailableError."""
        ...

    async def append_many(
        self, appends: Sequence[tuple[str, Sequence[NewEvent]]], *, new_epoch: str,
    ) -> list[AppendResult | StoreError]:
        """Append to several channels in one round trip; one slot per channel, in order: its
        result, or the StoreError of that channel alone. Raises StoreUnavailableError or
        StoreBusyError when the round trip fails as a whole."""
        ...

    async def read(
        self, channel: str, since_offset: int, limit: int, *, latest: bool = False,
    ) -> ReadResult:
        """Events after since_offset, oldest first. Raises StoreUnavailableError."""
        ...
