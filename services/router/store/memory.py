"""In-memory ownership store (single process)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.store.memory import MemoryBackend, check


class InMemoryOwnershipStore:
    def __init__(self, backend: MemoryBackend) -> None:
        self._b = backend
        self._edges: dict[str, set[str]] = backend.data.setdefault("channel_edges", {})

    async def add_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        check(self._b)
        for channel in channels:
            self._edges.setdefault(channel, set()).add(edge_id)

    async def remove_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        check(self._b)
        for channel in channels:
            edges = self._edges.get(channel)
            if edges is not None:
                edges.discard(edge_id)
                if not edges:
                    del self._edges[channel]

    async def edges_of(self, channel: str) -> set[str]:
        check(self._b)
        return set(self._edges.get(channel, ()))

    async def edges_of_many(self, channels: Sequence[str]) -> list[set[str]]:
        check(self._b)
        return [set(self._edges.get(c, ())) for c in channels]
