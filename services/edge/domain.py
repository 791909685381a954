"""The edge's domain types: what the gRPC adapters hand in and out instead of protobuf messages.

`routing_client.py` and `history_reader.py` are the only edge modules that import generated code;
they convert at the border. These are plain slotted classes, not pydantic: a delivery is one
small object per event per edge (never per subscriber), built once where the stream is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Delivery:
    """An event of a channel as a router sends it to this edge (or as a repair reads it).

    `offset` is 0 for ephemeral events (no order, no history); `frame` is the complete JSON
    frame, encoded once by the owner; `accepted` is when its publish was accepted (unix
    seconds), 0 for repairs and replays.
    """

    channel: str
    offset: int
    epoch: str
    frame: bytes
    priority: int
    accepted: float = 0.0


@dataclass(slots=True)
class Event:
    """An event to publish: `id` is the idempotency key, `body` the JSON envelope without offset
    and epoch, `priority` 1 (high) to 3 (low). `accepted_us` is when the edge took it from a
    client (unix µs), so that what it waits on the edge (behind its connection's earlier
    publishes) counts in the publish and delivery latencies; 0: when it is published."""

    id: str
    type: str
    body: bytes
    priority: int = 0
    accepted_us: int = 0


@dataclass(slots=True, frozen=True)
class PublishResult:
    """A durable publish held by history: the offset of its (first) event in the epoch;
    `duplicate` when its id had been stored before (the offset is the first one)."""

    offset: int
    epoch: str
    duplicate: bool = False
    more: tuple[tuple[int, bool], ...] = ()  # (offset, duplicate) of each further event of a unit


@dataclass(slots=True, frozen=True)
class StoredEvent:
    offset: int
    frame: bytes  # the complete JSON frame, offset and epoch included
    priority: int


@dataclass(slots=True, frozen=True)
class HistoryPage:
    """One read of a channel's history after an offset.

    `top_offset` is the channel's newest offset (0 when none), `first_offset` the oldest still
    held; `epoch_changed` when the read named an epoch that is not the current one; `complete`
    when every event after the requested offset up to the last returned one is present.
    """

    epoch: str
    top_offset: int
    first_offset: int = 0
    epoch_changed: bool = False
    complete: bool = True
    events: list[StoredEvent] = field(default_factory=list)
