"""Builds the router's ownership store on an opened backend; the only code that knows both adapters."""

from __future__ import annotations

from services.common.store.factory import Backend
from services.router.store.base import OwnershipStore


def build_ownership_store(backend: Backend, ttl_s: float) -> OwnershipStore:
    if backend.memory is not None:
        from services.router.store.memory import InMemoryOwnershipStore

        return InMemoryOwnershipStore(backend.memory)
    from services.router.store.dragonfly import DragonflyOwnershipStore

    return DragonflyOwnershipStore(backend.redis, backend.keys, ttl_s)
