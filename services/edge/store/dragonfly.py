"""DragonflyDB presence store: three keys per channel under its hash tag, one Lua script."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.common.store.base import Keys
from services.common.store.dragonfly import evalsha_many, load_script, translate_errors
from services.edge.store.base import PresenceChange, PresenceSnapshot

LUA = Path(__file__).parent / "lua"


class DragonflyPresenceStore:
    """Presence per channel in three keys under the channel's hash tag (see presence_update.lua);
    a batch of channels is one pipeline of script calls, one round trip."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._r = client
        self._keys = keys
        self._update = load_script(client, LUA / "presence_update.lua")

    def _k(self, channel: str) -> list[str]:
        k = self._keys
        return [k.channel(channel, "presence:z"), k.channel(channel, "presence:c"),
                k.channel(channel, "presence:u")]

    @staticmethod
    def _args(node_id: str, ttl_s: float, users: dict[str, int], listing: bool) -> list[Any]:
        now_ms = int(time.time() * 1000)
        args: list[Any] = [now_ms, now_ms + int(ttl_s * 1000), int(max(ttl_s * 3, 1.0) * 1000),
                           node_id, "1" if listing else "0"]
        for user, count in users.items():
            args += [user, max(count, 0)]
        return args

    @translate_errors
    async def update(self, node_id: str, counts: dict[str, dict[str, int]],
                     ttl_s: float) -> dict[str, PresenceChange]:
        if not counts:
            return {}
        channels = list(counts)
        raw = await evalsha_many(self._r, self._update, [
            (self._k(c), self._args(node_id, ttl_s, counts[c], False)) for c in channels],
            raise_on_error=True)
        return {c: _presence_change(r)[0] for c, r in zip(channels, raw, strict=True)}

    @translate_errors
    async def read(self, channel: str) -> PresenceSnapshot:
        raw = await self._update(keys=self._k(channel), args=self._args("", 1.0, {}, True))
        change, rest = _presence_change(raw)
        users = {_s(rest[i]): int(rest[i + 1]) for i in range(0, len(rest), 2)}
        return PresenceSnapshot(users, change.left)


def _presence_change(raw: list[Any]) -> tuple[PresenceChange, list[Any]]:
    n_joined = int(raw[1])
    joined = [_s(u) for u in raw[2:2 + n_joined]]
    at = 2 + n_joined
    n_left = int(raw[at])
    left = [_s(u) for u in raw[at + 1:at + 1 + n_left]]
    both = set(joined) & set(left)  # expired and written again in one call: no change
    change = PresenceChange(tuple(u for u in joined if u not in both),
                            tuple(u for u in left if u not in both), int(raw[0]))
    return change, raw[at + 1 + n_left:]


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
