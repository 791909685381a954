"""Channel ownership: which edges have subscribers of a channel.

Kept in the store so that a router that takes a channel over (its owner died or the router
set changed) can deliver to the right edges before they re-attach.

Contract: `add_edge`/`remove_edge` are idempotent; `edges_of` returns the current set (it may
hold edges that died without detaching: callers filter by live edges); the set of a channel
expires `ttl_s` after its last `add_edge`. Raises StoreUnavailableError.
"""

from __future__ import annotations

from typing import Protocol


class OwnershipStore(Protocol):
    async def add_edge(self, channel: str, edge_id: str) -> None: ...

    async def remove_edge(self, channel: str, edge_id: str) -> None: ...

    async def edges_of(self, channel: str) -> set[str]: ...
