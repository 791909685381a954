"""In-memory presence store: the same contract as DragonflyPresenceStore, in one process."""

from __future__ import annotations

import time

from services.common.store.memory import MemoryBackend, check
from services.edge.store.base import PresenceChange, PresenceSnapshot


class InMemoryPresenceStore:
    """Presence entries (channel -> (node, user) -> (connections, lease expiry)); same contract
    as the DragonflyDB adapter, judged by this process's wall clock."""

    def __init__(self, backend: MemoryBackend) -> None:
        self._b = backend
        self._channels: dict[str, dict[tuple[str, str], tuple[int, float]]] = (
            backend.data.setdefault("presence", {}))

    async def update(self, node_id: str, counts: dict[str, dict[str, int]],
                     ttl_s: float) -> dict[str, PresenceChange]:
        check(self._b)
        return {channel: self._apply(channel, node_id, users, ttl_s)
                for channel, users in counts.items()}

    async def read(self, channel: str) -> PresenceSnapshot:
        check(self._b)
        change = self._apply(channel, "", {}, 0.0)
        return PresenceSnapshot(_totals(self._channels.get(channel, {})), change.left)

    def _apply(self, channel: str, node_id: str, users: dict[str, int], ttl_s: float) -> PresenceChange:
        entries = self._channels.setdefault(channel, {})
        before = set(_totals(entries))
        now = time.time()
        for key in [k for k, (_, exp) in entries.items() if exp <= now]:
            del entries[key]
        swept = set(_totals(entries))
        for user, count in users.items():
            if count > 0:
                entries[(node_id, user)] = (count, now + ttl_s)
            else:
                entries.pop((node_id, user), None)
        after = _totals(entries)
        if not entries:
            del self._channels[channel]
        gone = (before - swept) | (swept - set(after))
        joined = set(after) - swept
        both = gone & joined
        return PresenceChange(tuple(sorted(joined - both)), tuple(sorted(gone - both)), len(after))


def _totals(entries: dict[tuple[str, str], tuple[int, float]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, user), (count, _) in entries.items():
        out[user] = out.get(user, 0) + count
    return out
