"""The presence store: who is in a channel, per edge, with leases. Built by `factory.py` from the
backend every tier opens (`services.common.store.factory.open_backend`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """What one presence write did to a channel: users who became present, users who are no
    longer present (their last connection left, or their edge's lease expired and this call
    removed it), and the number of users present afterwards. A user is never in both lists."""

    joined: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    count: int = 0


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """Users present in a channel (user -> connections over every live edge), and the users
    whose expired entries this read removed (the caller announces them, nobody else does)."""

    users: dict[str, int]
    left: tuple[str, ...] = ()


class PresenceStore(Protocol):
    """Who is in a channel: per (channel, edge, user) a connection count with a lease.

    An edge writes its own entries; an entry not renewed within `ttl_s` expires, and the first
    call that touches the channel afterwards (any edge's write or read) removes it and reports
    the users who are gone with it. Removal is atomic per channel, so exactly one caller learns
    of each departure: that caller announces it. Every call raises StoreUnavailableError when the
    store cannot be reached.
    """

    async def update(self, node_id: str, counts: dict[str, dict[str, int]],
                     ttl_s: float) -> dict[str, PresenceChange]:
        """Set this node's connection count per channel and user (0 removes the entry), renew
        the leases of the entries written, and remove expired entries of any node in those
        channels. One store round trip for all channels; atomic per channel."""
        ...

    async def read(self, channel: str) -> PresenceSnapshot:
        """The users present (expired entries are removed first and reported in `left`)."""
        ...
