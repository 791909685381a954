"""The router's appender against a real history server: appends of many channels made in one
event-loop iteration leave in one AppendBatch call, each channel stays atomic and ordered, and a
failure reaches exactly the appends it concerns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryCallError, HistoryClient, HistoryInvalidError
from services.common.membership import MemberWatcher
from services.common.store.base import Keys
from services.common.store.factory import Backend, build_membership_store
from services.common.store.memory import memory_backend
from services.router.appender import Appender
from tests.integration.test_history_service import TOKEN, StartHistory, event, start_history

__all__ = ["start_history"]  # the fixture, imported for this module's tests


class CountingClient:
    """The real HistoryClient, recording the channels of each AppendBatch call."""

    def __init__(self, inner: HistoryClient) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]:
        self.calls.append([channel for channel, _ in appends])
        return await self.inner.append_batch(appends)


@pytest.fixture
async def client(start_history: StartHistory, key_prefix: str) -> AsyncIterator[CountingClient]:
    await start_history()  # registers its lease in the in-memory store named by key_prefix
    url = f"memory://{key_prefix}"
    backend = Backend(url, Keys(key_prefix), memory=memory_backend(url))
    watcher = MemberWatcher(build_membership_store(backend), "history", poll_s=0.1)
    await watcher.start()
    history = HistoryClient(watcher, service_token=TOKEN, timeout_s=5.0)
    try:
        yield CountingClient(history)
    finally:
        await history.aclose()
        await watcher.aclose()


async def test_appends_of_one_iteration_leave_in_one_call(client: CountingClient) -> None:
    appender = Appender(client, max_events=1_000)
    try:
        responses = await asyncio.gather(*(
            appender.append(f"session:c{i}", [event(f"c{i}-a"), event(f"c{i}-b")]) for i in range(30)))
        assert len(client.calls) == 1 and len(client.calls[0]) == 30
        assert all([r.offset for r in resp.results] == [1, 2] for resp in responses)

        # The next round for the same channels continues their offsets.
        again = await asyncio.gather(*(appender.append(f"session:c{i}", [event(f"c{i}-c")]) for i in range(30)))
        assert all([r.offset for r in resp.results] == [3] for resp in again)
        assert len(client.calls) == 2
    finally:
        await appender.aclose()


async def test_a_batch_over_the_bound_is_split_without_splitting_a_channel(client: CountingClient) -> None:
    appender = Appender(client, max_events=5)
    try:
        responses = await asyncio.gather(*(
            appender.append(f"session:s{i}", [event(f"s{i}-{j}") for j in range(3)]) for i in range(4)))
        assert [len(c) for c in client.calls] == [1, 1, 1, 1]  # 3 + 3 > 5: one channel per call
        assert all([r.offset for r in resp.results] == [1, 2, 3] for resp in responses)
    finally:
        await appender.aclose()


async def test_an_invalid_append_fails_alone(client: CountingClient) -> None:
    appender = Appender(client, max_events=1_000)
    try:
        good, bad = await asyncio.gather(
            appender.append("session:good", [event("g1")]),
            appender.append("session:bad", [hpb.Event(id="b1", body=b"not json")]),
            return_exceptions=True)
        assert isinstance(good, hpb.AppendResponse) and good.results[0].offset == 1
        assert isinstance(bad, HistoryInvalidError)
        assert len(client.calls) == 1
    finally:
        await appender.aclose()


class HeldClient(CountingClient):
    """Holds each call until the test lets it go, to see what queues behind it."""

    def __init__(self, inner: HistoryClient) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]:
        self.calls.append([channel for channel, _ in appends])
        await self.release.wait()
        return await self.inner.append_batch(appends)


async def test_appends_made_while_every_call_is_busy_leave_together(client: CountingClient) -> None:
    held = HeldClient(client.inner)
    appender = Appender(held, max_events=1_000, max_inflight=1)
    try:
        first = asyncio.create_task(appender.append("session:first", [event("f1")]))
        await asyncio.sleep(0.01)  # the first call is under way (held)
        later = [asyncio.create_task(appender.append(f"session:l{i}", [event(f"l{i}")])) for i in range(5)]
        for _ in later:
            await asyncio.sleep(0)  # let each of them queue its append behind the held call
        assert held.calls == [["session:first"]]
        held.release.set()
        await asyncio.gather(first, *later)
        assert held.calls == [["session:first"], [f"session:l{i}" for i in range(5)]]
    finally:
        await appender.aclose()
