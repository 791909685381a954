"""The only code that knows every adapter: opens a backend from a URL and builds each store.

Return types are the Protocols, so mypy proves that both adapters conform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.settings import Settings
from services.common.store.base import Keys, MembershipStore, PresenceStore
from services.common.store.memory import (
    InMemoryMembershipStore,
    InMemoryPresenceStore,
    MemoryBackend,
    memory_backend,
)
from services.history.store.base import StreamLimits, StreamStore
from services.router.store.base import OwnershipStore


@dataclass
class Backend:
    """An opened store: a redis client or an in-memory backend. Close with `aclose()`."""

    url: str
    keys: Keys
    memory: MemoryBackend | None = None
    redis: Any = None  # redis.asyncio.Redis; typed Any so that only adapters import redis

    async def aclose(self) -> None:
        if self.redis is not None:
            client, self.redis = self.redis, None
            await client.aclose()


def open_backend(settings: Settings) -> Backend:
    url = settings.store_url
    keys = Keys(settings.key_prefix)
    if url.startswith("memory://"):
        return Backend(url, keys, memory=memory_backend(url))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from services.common.store.dragonfly import open_redis

        client = open_redis(url, timeout_s=settings.store_timeout_s,
                            max_connections=settings.store_max_connections,
                            pool_wait_s=settings.store_pool_wait_s)
        return Backend(url, keys, redis=client)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")


def build_membership_store(backend: Backend) -> MembershipStore:
    if backend.memory is not None:
        return InMemoryMembershipStore(backend.memory)
    from services.common.store.dragonfly import DragonflyMembershipStore

    return DragonflyMembershipStore(backend.redis, backend.keys)


def build_presence_store(backend: Backend) -> PresenceStore:
    if backend.memory is not None:
        return InMemoryPresenceStore(backend.memory)
    from services.common.store.dragonfly import DragonflyPresenceStore

    return DragonflyPresenceStore(backend.redis, backend.keys)


def build_ownership_store(backend: Backend, ttl_s: float) -> OwnershipStore:
    if backend.memory is not None:
        from services.router.store.memory import InMemoryOwnershipStore

        return InMemoryOwnershipStore(backend.memory)
    from services.router.store.dragonfly import DragonflyOwnershipStore

    return DragonflyOwnershipStore(backend.redis, backend.keys, ttl_s)


def build_stream_store(backend: Backend, limits: StreamLimits) -> StreamStore:
    if backend.memory is not None:
        from services.history.store.memory import InMemoryStreamStore

        return InMemoryStreamStore(backend.memory, limits)
    from services.history.store.dragonfly import DragonflyStreamStore

    return DragonflyStreamStore(backend.redis, backend.keys, limits)


def stream_limits(settings: Settings) -> StreamLimits:
    return StreamLimits(
        max_len=settings.history_max_len,
        ttl_s=settings.history_ttl_s,
        meta_ttl_s=settings.history_meta_ttl_s,
        idempotency_window_s=settings.idempotency_window_s,
    )
