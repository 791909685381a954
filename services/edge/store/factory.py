"""Builds the edge's presence store on an opened backend; the only code that knows both adapters."""

from __future__ import annotations

from services.common.store.factory import Backend
from services.edge.store.base import PresenceStore


def build_presence_store(backend: Backend) -> PresenceStore:
    if backend.memory is not None:
        from services.edge.store.memory import InMemoryPresenceStore

        return InMemoryPresenceStore(backend.memory)
    from services.edge.store.dragonfly import DragonflyPresenceStore

    return DragonflyPresenceStore(backend.redis, backend.keys)
