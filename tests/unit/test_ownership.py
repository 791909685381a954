"""A router's view of channel ownership follows the live router set: the owner is the rendezvous
winner of the current set (remembered per channel), recomputed when the set changes or the
router drains."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.common.sharding import owner_of
from services.common.store.base import Keys, StoreUnavailableError
from services.common.store.factory import Backend
from services.common.store.memory import memory_backend
from services.router.links import EdgeLink
from services.router.ownership import Ownership
from services.router.store.base import OwnershipStore
from services.router.store.factory import build_ownership_store


def ownership(node_id: str, key_prefix: str) -> Ownership:
    url = f"memory://{key_prefix}"
    backend = Backend(url, Keys(key_prefix), memory=memory_backend(url))
    return Ownership(node_id, build_ownership_store(backend, 60.0), refresh_s=1.0)


def test_owners_follow_the_router_set_and_drain(key_prefix: str) -> None:
    own = ownership("r1", key_prefix)
    channels = [f"session:s{i}" for i in range(200)]
    assert all(own.owns(c) for c in channels)  # alone, it owns everything

    own.set_routers({"r1", "r2", "r3"})
    expected = {c: owner_of(c, {"r1", "r2", "r3"}) for c in channels}
    assert {c: own.owner(c) for c in channels} == expected
    assert {c: own.owner(c) for c in channels} == expected  # asked again: the same answer
    assert 0 < sum(own.owns(c) for c in channels) < len(channels)

    own.set_routers({"r1", "r2"})  # r3 left: its channels move, the others stay
    after = {c: own.owner(c) for c in channels}
    assert after == {c: owner_of(c, {"r1", "r2"}) for c in channels}
    assert all(after[c] == expected[c] for c in channels if expected[c] != "r3")

    own.drain()  # a draining router owns nothing while another router is live
    assert not any(own.owns(c) for c in channels)
    assert {own.owner(c) for c in channels} == {"r2"}


class CountingStore:
    """The in-memory ownership store, counting the batched reads (and failing them on demand)."""

    def __init__(self, inner: OwnershipStore) -> None:
        self.inner = inner
        self.reads: list[list[str]] = []
        self.writes: list[tuple[str, str, list[str]]] = []
        self.down = False
        self.gate = asyncio.Event()  # writes wait for it
        self.gate.set()
        self.written = asyncio.Event()

    async def until_written(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.writes) < count:
                self.written.clear()
                await self.written.wait()

    async def add_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        await self._write("add", edge_id, channels)
        await self.inner.add_edge(edge_id, channels)

    async def remove_edge(self, edge_id: str, channels: Sequence[str]) -> None:
        await self._write("remove", edge_id, channels)
        await self.inner.remove_edge(edge_id, channels)

    async def _write(self, kind: str, edge_id: str, channels: Sequence[str]) -> None:
        await self.gate.wait()
        if self.down:
            raise StoreUnavailableError("store unavailable: test")
        self.writes.append((kind, edge_id, sorted(channels)))
        self.written.set()

    async def edges_of(self, channel: str) -> set[str]:
        return (await self.edges_of_many([channel]))[0]

    async def edges_of_many(self, channels: Sequence[str]) -> list[set[str]]:
        self.reads.append(list(channels))
        if self.down:
            raise StoreUnavailableError("store unavailable: test")
        return await self.inner.edges_of_many(channels)


def counted(node_id: str, key_prefix: str) -> tuple[Ownership, CountingStore]:
    url = f"memory://{key_prefix}"
    backend = Backend(url, Keys(key_prefix), memory=memory_backend(url))
    store = CountingStore(build_ownership_store(backend, 60.0))
    return Ownership(node_id, store, refresh_s=60.0), store


async def test_concurrent_target_lookups_share_one_store_round_trip(key_prefix: str) -> None:
    """A storm's first publishes on many channels read the stored edge sets together."""
    own, store = counted("r2", key_prefix)
    channels = [f"session:s{i}" for i in range(50)]
    await store.add_edge("e-old", channels)  # attached to a previous owner
    for edge_id in ("e-old", "e-new"):
        own.links[edge_id] = EdgeLink(edge_id, 10)
    own.attach(own.links["e-new"], channels[:1])

    found = await asyncio.gather(*(own.targets(c) for c in channels), *(own.targets(c) for c in channels))

    assert store.reads == [channels]  # one batch, each channel once
    assert {link.edge_id for link in found[0]} == {"e-old", "e-new"}
    assert all({link.edge_id for link in f} == {"e-old"} for f in found[1:50])
    await own.targets(channels[7])  # cached: no read
    assert len(store.reads) == 1


async def test_a_failed_load_keeps_the_attached_edges(key_prefix: str) -> None:
    own, store = counted("r1", key_prefix)
    own.links["e1"] = EdgeLink("e1", 10)
    own.attach(own.links["e1"], ["session:a"])
    store.down = True
    assert [link.edge_id for link in await own.targets("session:a")] == ["e1"]
    assert store.reads == [["session:a"]]


async def test_attaches_are_answered_before_the_store_write_and_saved_in_batches(
        key_prefix: str, tu: float) -> None:
    own, store = counted("r1", key_prefix)
    await own.start()
    try:
        store.gate.clear()  # the store hangs: attaching must not
        e1, e2 = EdgeLink("e1", 10), EdgeLink("e2", 10)
        own.links.update(e1=e1, e2=e2)
        own.attach(e1, ["session:a"])
        own.attach(e1, ["session:b", "session:c"])
        own.attach(e2, ["session:a"])
        own.detach(e1, ["session:c"])  # before anything was written: only the last state counts
        assert own.subs == {"session:a": {"e1", "e2"}, "session:b": {"e1"}}
        await asyncio.sleep(0.05 * tu)
        assert store.writes == []

        store.gate.set()
        await store.until_written(3, 2 * tu)
        # one write per edge and kind for everything that accumulated
        assert sorted(store.writes) == [("add", "e1", ["session:a", "session:b"]),
                                        ("add", "e2", ["session:a"]), ("remove", "e1", ["session:c"])]
        assert await store.inner.edges_of_many(["session:a", "session:b", "session:c"]) == [
            {"e1", "e2"}, {"e1"}, set()]
    finally:
        await own.aclose()


async def test_unsaved_changes_are_retried_after_a_store_failure(key_prefix: str, tu: float) -> None:
    own, store = counted("r1", key_prefix)
    await own.start()
    try:
        store.down = True
        e1 = EdgeLink("e1", 10)
        own.links["e1"] = e1
        own.attach(e1, ["session:a"])
        await asyncio.sleep(0.1 * tu)
        assert store.writes == []
        store.down = False
        await store.until_written(1, 3 * tu)  # the retry comes within SAVE_RETRY_S
        assert await store.inner.edges_of("session:a") == {"e1"}
    finally:
        await own.aclose()


class CancelTurnsIntoStoreError(CountingStore):
    """Writes wait at the gate; a write cancelled there ends with a store error instead of
    CancelledError, as a redis-py command cancelled mid-read can ("Connection closed by
    server")."""

    async def _write(self, kind: str, edge_id: str, channels: Sequence[str]) -> None:
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            raise StoreUnavailableError("store unavailable: ConnectionError") from None
        await super()._write(kind, edge_id, channels)


async def test_the_saver_stops_when_its_cancellation_comes_back_as_a_store_error(
        key_prefix: str, tu: float) -> None:
    url = f"memory://{key_prefix}"
    backend = Backend(url, Keys(key_prefix), memory=memory_backend(url))
    store = CancelTurnsIntoStoreError(build_ownership_store(backend, 60.0))
    own = Ownership("r1", store, refresh_s=60.0)
    await own.start()
    store.gate.clear()  # the next write hangs in the store
    own.links["e1"] = EdgeLink("e1", 10)
    own.attach(own.links["e1"], ["session:s"])
    for _ in range(5):
        await asyncio.sleep(0)  # the saver is now waiting on the write
    closing = asyncio.create_task(own.aclose())
    for _ in range(5):
        await asyncio.sleep(0)  # the saver's cancellation has come back as a store error
    store.gate.set()  # aclose's own final save may go through
    async with asyncio.timeout(5 * tu):
        await closing
