"""The store seam shared by every tier: backend selection, key layout and membership leases.

A *backend* is what a store URL opens: `redis://` or `rediss://` (DragonflyDB, or Redis 7 as
its stand-in) or `memory://NAME` (a real in-process back end for tests and single-process
runs; every user of the same NAME in one process shares its state). Each tier's own stores
(ownership, streams) are built from the same backend by their own factories.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """Root of store errors."""


class StoreUnavailableError(StoreError):
    """The store could not be reached or did not answer in time; the operation may be retried."""


class StoreBusyError(StoreError):
    """Every pooled connection stayed busy for the bounded pool wait: the store is up but this
    process has more calls in flight than connections. Retry; never report it as an outage."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Key layout: every key carries the prefix; per-channel keys share a `{channel}` hash tag."""

    prefix: str

    def channel(self, channel: str, suffix: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{suffix}"

    def members(self, role: str, suffix: str) -> str:
        return f"{self.prefix}:{{members:{role}}}:{suffix}"


class MembershipStore(Protocol):
    """Leases of live nodes per role ("router", "history", "edge").

    A lease lasts `ttl_s` from the last `register`; a node that stops refreshing disappears
    from `members` once its lease expires. Leases are judged by the wall clock of the caller,
    so nodes must keep their clocks in sync to well within the lease TTL.
    """

    async def register(self, role: str, node_id: str, address: str, ttl_s: float) -> None:
        """Claim or refresh the lease. Raises StoreUnavailableError."""
        ...

    async def deregister(self, role: str, node_id: str) -> None:
        """Drop the lease now (graceful exit). Raises StoreUnavailableError."""
        ...

    async def members(self, role: str) -> dict[str, str]:
        """Live node id -> address. Raises StoreUnavailableError."""
        ...

    async def ping(self) -> None:
        """Raises StoreUnavailableError when the store cannot be reached."""
        ...

    async def aclose(self) -> None: ...


# ---- presence --------------------------------------------------------------------------------

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
