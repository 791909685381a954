"""The owning router's own appends (`append_via = "store"`): history's write path run in the
router against a real redis-server. Offsets and epochs as history gives them, a retry is a
duplicate, an invalid append fails alone, and a store that stalls or fails gives every append a
retryable error instead of a hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryInvalidError, HistoryUnavailableError
from services.common.store.base import StoreError
from services.common.store.factory import Backend, open_backend
from services.history.metrics import HistoryMetrics
from services.history.store.base import AppendResult, NewEvent, ReadResult, StreamStore
from services.history.store.factory import build_stream_store
from services.history.writer import StreamWriter
from services.router.appender import Appender, DirectAppends
from tests.integration.test_store_contract import LIMITS, settings_for
from tests.support.redis_server import RedisServer


def event(event_id: str) -> hpb.Event:
    return hpb.Event(id=event_id, body=b'{"id":"%s"}' % event_id.encode(), priority=1)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def backend(redis_server: RedisServer, key_prefix: str, tu: float) -> AsyncIterator[Backend]:
    opened = open_backend(settings_for(redis_server.url, key_prefix, tu))
    try:
        yield opened
    finally:
        await opened.aclose()


async def test_appends_get_offsets_epochs_and_duplicates_as_from_history(backend: Backend) -> None:
    registry = CollectorRegistry()
    store = build_stream_store(backend, LIMITS)
    appender = Appender(DirectAppends(StreamWriter(store, HistoryMetrics(registry)), timeout_s=5.0),
                        max_events=1_000)
    try:
        a, b = await asyncio.gather(appender.append("session:a", [event("a1"), event("a2")]),
                                    appender.append("session:b", [event("b1")]))
        assert [r.offset for r in a.results] == [1, 2] and [r.offset for r in b.results] == [1]
        assert a.epoch and b.epoch
        again = await appender.append("session:a", [event("a2"), event("a3")])  # a retry, then new
        assert [(r.offset, r.duplicate) for r in again.results] == [(2, True), (3, False)]
        assert again.epoch == a.epoch
        with pytest.raises(HistoryInvalidError):
            await appender.append("session:a", [hpb.Event(id="", body=b"{}")])
        # what a history node would read back
        got = await store.read("session:a", 0, 10)
        assert [e.offset for e in got.events] == [1, 2, 3] and got.epoch == a.epoch
    finally:
        await appender.aclose()
    # counted where the router's /metrics shows them
    assert value(registry, "history_appends_total", result="ok") == 4
    assert value(registry, "history_appends_total", result="duplicate") == 1
    assert value(registry, "history_errors_total", reason="invalid") == 1


class StallingStore:
    """A StreamStore whose appends never return, as when the store stops answering."""

    def __init__(self) -> None:
        self.calls = 0

    async def append(self, channel: str, events: Sequence[NewEvent], *, new_epoch: str) -> AppendResult:
        raise AssertionError("not used")

    async def append_many(
        self, appends: Sequence[tuple[str, Sequence[NewEvent]]], *, new_epoch: str,
    ) -> list[AppendResult | StoreError]:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def read(self, channel: str, since_offset: int, limit: int, *, latest: bool = False) -> ReadResult:
        raise AssertionError("not used")


async def test_a_stalled_store_fails_every_append_retryably_at_the_deadline(tu: float) -> None:
    stalling = StallingStore()
    store: StreamStore = stalling
    direct = DirectAppends(StreamWriter(store, HistoryMetrics(CollectorRegistry())), timeout_s=0.2 * tu)
    outcomes = await asyncio.wait_for(
        direct.append_batch([("session:a", [event("a1")]), ("session:b", [event("b1")])]), 5 * tu)
    assert stalling.calls == 1
    assert [type(o) for o in outcomes] == [HistoryUnavailableError, HistoryUnavailableError]


async def test_a_store_outage_fails_every_append_retryably(tu: float) -> None:
    with RedisServer() as server:
        opened = open_backend(settings_for(server.url, "direct", tu, store_timeout_s=0.5 * tu))
        try:
            registry = CollectorRegistry()
            direct = DirectAppends(StreamWriter(build_stream_store(opened, LIMITS), HistoryMetrics(registry)),
                                   timeout_s=5 * tu)
            (ok,) = await direct.append_batch([("session:a", [event("a1")])])
            assert isinstance(ok, hpb.AppendResponse)
            server.kill()
            outcomes = await direct.append_batch([("session:a", [event("a2")]), ("session:b", [event("b1")])])
            assert all(isinstance(o, HistoryUnavailableError) for o in outcomes), outcomes
            assert value(registry, "history_errors_total", reason="store_unavailable") == 1
        finally:
            await opened.aclose()

