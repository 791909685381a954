"""LeaseKeeper's graceful exit: the lease is gone once aclose returns, even when a refresh was on
its way to the store at that moment."""

from __future__ import annotations

import asyncio

from services.common.membership import LeaseKeeper


class ReorderingStore:
    """A MembershipStore of our own with the one property of a real store that matters here: a
    command already sent is carried out when the store gets to it, whether or not its caller
    still waits for the answer. While `held`, registers stay in flight until `carry_out()`; a
    deregister is carried out at once (it came on another connection, which the store
    happened to read first)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], str] = {}
        self.held = False
        self.in_flight: list[tuple[tuple[str, str], str, asyncio.Future[None]]] = []
        self.sent = asyncio.Event()  # a register arrived while held

    async def register(self, role: str, node_id: str, address: str, ttl_s: float) -> None:
        if not self.held:
            self.leases[(role, node_id)] = address
            return
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_flight.append(((role, node_id), address, answer))
        self.sent.set()
        await answer

    def carry_out(self) -> None:
        for key, address, answer in self.in_flight:
            self.leases[key] = address
            if not answer.done():
                answer.set_result(None)
        self.in_flight.clear()

    async def deregister(self, role: str, node_id: str) -> None:
        self.leases.pop((role, node_id), None)

    async def members(self, role: str) -> dict[str, str]:
        return {node: address for (r, node), address in self.leases.items() if r == role}

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_refresh_in_flight_does_not_bring_the_lease_back_after_aclose() -> None:
    store = ReorderingStore()
    keeper = LeaseKeeper(store, "router", "router-1", "127.0.0.1:1", ttl_s=10.0, refresh_s=0.01)
    await keeper.start()
    assert await store.members("router") == {"router-1": "127.0.0.1:1"}
    store.held = True
    async with asyncio.timeout(5):
        await store.sent.wait()  # a refresh is on its way
    closing = asyncio.create_task(keeper.aclose())
    for _ in range(20):  # let aclose go as far as it can while the refresh is in flight
        await asyncio.sleep(0)
    store.carry_out()  # the store gets to the refresh only now
    async with asyncio.timeout(5):
        await closing
    assert await store.members("router") == {}


async def test_aclose_while_idle_drops_the_lease_at_once() -> None:
    store = ReorderingStore()
    keeper = LeaseKeeper(store, "edge", "edge-1", "127.0.0.1:2", ttl_s=10.0, refresh_s=60.0)
    await keeper.start()
    assert await store.members("edge") == {"edge-1": "127.0.0.1:2"}
    async with asyncio.timeout(5):
        await keeper.aclose()
    assert await store.members("edge") == {}
