"""Builds history's stream store on an opened backend; the only code that knows both adapters."""

from __future__ import annotations

from services.common.settings import Settings
from services.common.store.factory import Backend
from services.history.store.base import StreamLimits, StreamStore


def build_stream_store(backend: Backend, limits: StreamLimits, *, piped_appends: bool = False) -> StreamStore:
    """`piped_appends`: appends over a pipelined connection of their own where the URL allows
    one (`redis://`), for a process whose hot path they are (the owning router)."""
    if backend.memory is not None:
        from services.history.store.memory import InMemoryStreamStore

        return InMemoryStreamStore(backend.memory, limits)
    from services.history.store.dragonfly import DragonflyStreamStore

    return DragonflyStreamStore(backend.redis, backend.keys, limits,
                                pipe=backend.open_pipe() if piped_appends else None)


def stream_limits(settings: Settings) -> StreamLimits:
    return StreamLimits(
        max_len=settings.history_max_len,
        ttl_s=settings.history_ttl_s,
        meta_ttl_s=settings.history_meta_ttl_s,
        idempotency_window_s=settings.idempotency_window_s,
    )
