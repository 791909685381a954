"""In-memory back end: real, single-process, shared by name. For tests and `dev` without redis."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from services.common.store.base import PresenceChange, PresenceSnapshot

_BACKENDS: dict[str, MemoryBackend] = {}


@dataclass
class MemoryBackend:
    """State shared by every in-memory store opened on the same `memory://NAME` URL."""

    name: str
    members: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    available: bool = True  # tests flip it to exercise StoreUnavailableError paths


def memory_backend(url: str) -> MemoryBackend:
    name = url.removeprefix("memory://") or "default"
    return _BACKENDS.setdefault(name, MemoryBackend(name))


def check(backend: MemoryBackend) -> None:
    from services.common.store.base import StoreUnavailableError

    if not backend.available:
        raise StoreUnavailableError(f"memory store {backend.name!r} is marked unavailable")


class InMemoryMembershipStore:
    def __init__(self, backend: MemoryBackend) -> None:
        self._b = backend

    async def register(self, role: str, node_id: str, address: str, ttl_s: float) -> None:
        check(self._b)
        self._b.members.setdefault(role, {})[node_id] = (address, time.time() + ttl_s)

    async def deregister(self, role: str, node_id: str) -> None:
        check(self._b)
        self._b.members.get(role, {}).pop(node_id, None)

    async def members(self, role: str) -> dict[str, str]:
        check(self._b)
        now = time.time()
        table = self._b.members.get(role, {})
        for node in [n for n, (_, exp) in table.items() if exp <= now]:
            del table[node]
        return {n: addr for n, (addr, _) in table.items()}

    async def ping(self) -> None:
        check(self._b)

    async def aclose(self) -> None:
        return None


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
