"""The store seam shared by every tier: backend selection, key layout and membership leases.

A *backend* is what a store URL opens: `redis://` or `rediss://` (DragonflyDB, or Redis 7 as
its stand-in) or `memory://NAME` (a real in-process back end for tests and single-process
runs; every user of the same NAME in one process shares its state). Each tier's own stores
(ownership, streams, presence) are built from the same backend by their own factories.
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
