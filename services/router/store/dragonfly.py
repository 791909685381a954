"""DragonflyDB ownership store: one SET per channel, under the channel's hash tag."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from services.common.store.base import Keys
from services.common.store.dragonfly import evalsha_many, load_script, translate_errors

LUA = Path(__file__).parent / "lua"
BATCH = 500  # channels per pipeline: a re-attach of every channel does not hold the store long


class DragonflyOwnershipStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self._r = client
        self._keys = keys
        self._ttl_ms = int(ttl_s * 1000)
        self._add = load_script(client, LUA / "edge_add.lua")

    @translate_errors
    async def add_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        for at in range(0, len(channels), BATCH):
            calls = [([self._keys.channel(c, "edges")], [edge_id, self._ttl_ms])
                     for c in channels[at:at + BATCH]]
            for reply in await evalsha_many(self._r, self._add, calls):
                if isinstance(reply, Exception):
                    raise reply

    @translate_errors
    async def remove_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        for at in range(0, len(channels), BATCH):
            async with self._r.pipeline(transaction=False) as p:
                for channel in channels[at:at + BATCH]:
                    p.srem(self._keys.channel(channel, "edges"), edge_id)
                await p.execute()

    @translate_errors
    async def edges_of(self, channel: str) -> set[str]:
        return _members(await self._r.smembers(self._keys.channel(channel, "edges")))

    @translate_errors
    async def edges_of_many(self, channels: Sequence[str]) -> list[set[str]]:
        found: list[set[str]] = []
        for at in range(0, len(channels), BATCH):
            async with self._r.pipeline(transaction=False) as p:
                for channel in channels[at:at + BATCH]:
                    p.smembers(self._keys.channel(channel, "edges"))
                found += [_members(raw) for raw in await p.execute()]
        return found


def _members(raw: set[bytes | str]) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
