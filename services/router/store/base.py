"""Channel ownership: which edges have subscribers of a channel.

Kept in the store so that a router that takes a channel over (its owner died or the router
set changed) can deliver to the right edges before they re-attach.

Contract: `add_edge`/`remove_edge` take one edge and a batch of channels (one store round trip
for a batch) and are idempotent; `edges_of` returns the current set (it may hold edges that died
without detaching: callers filter by live edges); the set of a channel expires `ttl_s` after its
last `add_edge`. Raises StoreUnavailableError (a failed batch may be applied in part).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class OwnershipStore(Protocol):
    async def add_edge(self, edge_id: str, channels: Sequence[str]) -> None: ...

    async def remove_edge(self, edge_id: str, channels: Sequence[str]) -> None: ...

    async def edges_of(self, channel: str) -> set[str]: ...

    async def edges_of_many(self, channels: Sequence[str]) -> list[set[str]]:
        """`edges_of` for each channel, in one store round trip."""
        ...
