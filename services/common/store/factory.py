"""Opens a backend from a store URL and builds the membership store on it.

Each tier builds its own stores on the same backend with its own factory
(`services.history.store.factory`, `services.router.store.factory`,
`services.edge.store.factory`); nothing here knows a tier. Return types are the Protocols,
so mypy proves that both adapters conform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.common.settings import Settings
from services.common.store.base import Keys, MembershipStore
from services.common.store.memory import (
    InMemoryMembershipStore,
    MemoryBackend,
    memory_backend,
)

if TYPE_CHECKING:
    from services.common.store.pipe import CommandPipe


@dataclass
class Backend:
    """An opened store: a redis client or an in-memory backend. Close with `aclose()`."""

    url: str
    keys: Keys
    memory: MemoryBackend | None = None
    redis: Any = None  # redis.asyncio.Redis; typed Any so that only adapters import redis
    timeout_s: float = 2.0
    pipes: list[CommandPipe] = field(default_factory=list)  # opened on it, closed with it

    def open_pipe(self) -> CommandPipe | None:
        """A pipelined connection of its own (services/common/store/pipe.py) for a `redis://`
        store, else None (TLS and Unix sockets stay on the pooled client)."""
        from services.common.store.pipe import CommandPipe, pipe_address

        address = pipe_address(self.url)
        if address is None:
            return None
        pipe = CommandPipe(address, timeout_s=self.timeout_s)
        self.pipes.append(pipe)
        return pipe

    async def aclose(self) -> None:
        pipes, self.pipes = self.pipes, []
        for pipe in pipes:
            await pipe.aclose()
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
        return Backend(url, keys, redis=client, timeout_s=settings.store_timeout_s)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")


def build_membership_store(backend: Backend) -> MembershipStore:
    if backend.memory is not None:
        return InMemoryMembershipStore(backend.memory)
    from services.common.store.dragonfly import DragonflyMembershipStore

    return DragonflyMembershipStore(backend.redis, backend.keys)
