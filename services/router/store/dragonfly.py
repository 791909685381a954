"""DragonflyDB ownership store: one SET per channel, under the channel's hash tag."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.common.store.base import Keys
from services.common.store.dragonfly import translate_errors


class DragonflyOwnershipStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self._r = client
        self._keys = keys
        self._ttl_ms = int(ttl_s * 1000)

    @translate_errors
    async def add_edge(self, channel: str, edge_id: str) -> None:
        key = self._keys.channel(channel, "edges")
        async with self._r.pipeline(transaction=True) as p:
            p.sadd(key, edge_id)
            p.pexpire(key, self._ttl_ms)
            await p.execute()

    @translate_errors
    async def remove_edge(self, channel: str, edge_id: str) -> None:
        await self._r.srem(self._keys.channel(channel, "edges"), edge_id)

    @translate_errors
    async def edges_of(self, channel: str) -> set[str]:
        raw = await self._r.smembers(self._keys.channel(channel, "edges"))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
