"""In-memory back end: real, single-process, shared by name. For tests and `dev` without redis."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
