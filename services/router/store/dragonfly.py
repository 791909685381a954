"""DragonflyDB ownership store: one SET per channel, under the channel's hash tag."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import redis.asyncio as aioredis

from services.common.store.base import Keys
from services.common.store.dragonfly import evalsha_many, load_script, translate_errors

LUA = Path(__file__).parent / "lua"
BATCH = 500  # channels per pipeline


class DragonflyOwnershipStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self._r = client
        self._keys = keys
        self._ttl_ms = int(ttl_s * 1000)
        self._add = load_script(client, LUA / "edge_add.lua")

    @translate_errors
    async def add_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        for part in _parts(channels):
            await evalsha_many(self._r, self._add, [([self._key(c)], [edge_id, self._ttl_ms]) for c in part],
                               raise_on_error=True)

    @translate_errors
    async def remove_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        for part in _parts(channels):
            async with self._r.pipeline(transaction=False) as p:
                for channel in part:
                    p.srem(self._key(channel), edge_id)
                await p.execute()

    @translate_errors
    async def edges_of(self, channel: str) -> set[str]:
        return _members(await self._r.smembers(self._key(channel)))

    @translate_errors
    async def edges_of_many(self, channels: Sequence[str]) -> list[set[str]]:
        found: list[set[str]] = []
        for part in _parts(channels):
            async with self._r.pipeline(transaction=False) as p:
                for channel in part:
                    p.smembers(self._key(channel))
                found += [_members(raw) for raw in await p.execute()]
        return found

    def _key(self, channel: str) -> str:
        return self._keys.channel(channel, "edges")


def _parts(channels: Sequence[str]) -> Iterator[Sequence[str]]:
    """At most BATCH channels per pipeline: a re-attach of every channel does not hold the store long."""
    for at in range(0, len(channels), BATCH):
        yield channels[at:at + BATCH]


def _members(raw: set[bytes | str]) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else str(m) for m in raw}
