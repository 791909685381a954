"""The edge's presence writer: changes are written in batches, at most once per flush interval,
and every join is still announced once."""

from __future__ import annotations

import asyncio
import json

from services.common.store.base import Keys
from services.common.store.factory import Backend
from services.common.store.memory import memory_backend
from services.edge.domain import Event
from services.edge.presence import PresenceTracker
from services.edge.store.base import PresenceChange, PresenceSnapshot, PresenceStore
from services.edge.store.factory import build_presence_store


class CountingStore:
    """The in-memory presence store, recording each batched update."""

    def __init__(self, inner: PresenceStore) -> None:
        self.inner = inner
        self.updates: list[dict[str, dict[str, int]]] = []

    async def update(self, node_id: str, counts: dict[str, dict[str, int]],
                     ttl_s: float) -> dict[str, PresenceChange]:
        self.updates.append(counts)
        return await self.inner.update(node_id, counts, ttl_s)

    async def read(self, channel: str) -> PresenceSnapshot:
        return await self.inner.read(channel)


async def test_a_storm_of_joins_is_written_in_few_batches_and_announced_once(key_prefix: str, tu: float) -> None:
    url = f"memory://{key_prefix}"
    store = CountingStore(build_presence_store(Backend(url, Keys(key_prefix), memory=memory_backend(url))))
    announced: list[tuple[str, str, object]] = []

    async def publish(channel: str, event: Event) -> object:
        announced.append((channel, event.type, json.loads(event.body)["payload"].get("user_id")))
        return None

    tracker = PresenceTracker(store, "e1", publish, ttl_s=30.0, events=True, event_max_users=100,
                              throttle_s=1.0, timeout_s=2.0 * tu, flush_s=0.2 * tu)
    await tracker.start()
    try:
        for i in range(200):  # 200 connections of 20 users join 10 rooms over ~0.4 tu
            tracker.add(f"session:r{i % 10}", f"u{i % 20}")
            if i % 20 == 19:
                await asyncio.sleep(0.04 * tu)
        users = await tracker.users("session:r3")  # waits for this edge's pending writes
        assert users == {"u3": 10, "u13": 10}
    finally:
        await tracker.aclose()

    assert 2 <= len(store.updates) <= 5  # not one write per join (nor per loop iteration)
    joins = sorted((c, u) for c, kind, u in announced if kind == "presence_join")
    assert joins == sorted((f"session:r{r}", f"u{u}") for r in range(10) for u in (r, r + 10))



async def test_more_connections_of_present_users_wait_for_the_next_write(key_prefix: str, tu: float) -> None:
    """Only a user's first connection here and last one gone are written soon: a storm into
    sessions whose users are present writes nothing, until a query needs the counts."""
    url = f"memory://{key_prefix}"
    store = CountingStore(build_presence_store(Backend(url, Keys(key_prefix), memory=memory_backend(url))))

    async def publish(channel: str, event: Event) -> object:
        return None

    tracker = PresenceTracker(store, "e1", publish, ttl_s=30.0, events=True, event_max_users=100,
                              throttle_s=1.0, timeout_s=2.0 * tu, flush_s=0.05 * tu)
    await tracker.start()
    try:
        for room in range(10):
            tracker.add(f"session:r{room}", "u1")
        await asyncio.sleep(0.2 * tu)
        assert len(store.updates) == 1  # the ten joins, in one write
        for _ in range(5):  # 50 more connections of u1: counts only
            for room in range(10):
                tracker.add(f"session:r{room}", "u1")
        tracker.remove("session:r0", "u1")
        await asyncio.sleep(0.3 * tu)
        assert len(store.updates) == 1
        tracker.add("session:r0", "u2")  # a join: written soon, alone
        await asyncio.sleep(0.2 * tu)
        assert store.updates[1:] == [{"session:r0": {"u2": 1}}]
        tracker.add("session:r3", "u1")
        assert await tracker.users("session:r3") == {"u1": 7}  # a query writes what waits first
        assert await tracker.users("session:r0") == {"u1": 5, "u2": 1}
        assert len(store.updates) == 3
    finally:
        await tracker.aclose()


class ReorderingStore:
    """The in-memory presence store, with the one property of a real store that matters here: a
    write already sent is carried out when the store gets to it, whether or not its caller
    still waits for the answer. While `held`, writes stay in flight until `carry_out()`; other
    writes are carried out at once (they came on another connection, read first)."""

    def __init__(self, inner: PresenceStore) -> None:
        self.inner = inner
        self.held = False
        self.in_flight: list[tuple[str, dict[str, dict[str, int]], float,
                                   asyncio.Future[dict[str, PresenceChange]]]] = []
        self.sent = asyncio.Event()

    async def update(self, node_id: str, counts: dict[str, dict[str, int]],
                     ttl_s: float) -> dict[str, PresenceChange]:
        if not self.held:
            return await self.inner.update(node_id, counts, ttl_s)
        answer: asyncio.Future[dict[str, PresenceChange]] = asyncio.get_running_loop().create_future()
        self.in_flight.append((node_id, counts, ttl_s, answer))
        self.sent.set()
        return await answer

    async def carry_out(self) -> None:
        in_flight, self.in_flight = self.in_flight, []
        for node_id, counts, ttl_s, answer in in_flight:
            changes = await self.inner.update(node_id, counts, ttl_s)
            if not answer.done():
                answer.set_result(changes)

    async def read(self, channel: str) -> PresenceSnapshot:
        return await self.inner.read(channel)


async def test_a_write_in_flight_does_not_bring_entries_back_after_aclose(key_prefix: str, tu: float) -> None:
    url = f"memory://{key_prefix}"
    store = ReorderingStore(build_presence_store(Backend(url, Keys(key_prefix), memory=memory_backend(url))))

    async def publish(channel: str, event: Event) -> object:
        return None

    tracker = PresenceTracker(store, "e1", publish, ttl_s=30.0, events=False, event_max_users=100,
                              throttle_s=1.0, timeout_s=5.0 * tu)
    await tracker.start()
    store.held = True
    tracker.add("session:s", "u1")
    async with asyncio.timeout(5 * tu):
        await store.sent.wait()  # the join's write is on its way
    store.held = False
    closing = asyncio.create_task(tracker.aclose())
    for _ in range(20):  # let aclose go as far as it can while the write is in flight
        await asyncio.sleep(0)
    await store.carry_out()  # the store gets to the join's write only now
    async with asyncio.timeout(5 * tu):
        await closing
    assert (await store.read("session:s")).users == {}
