"""The edge hub against a real history service: ordering, duplicates, gap repair and resync.

History is the real gRPC server (`services.history.server.running`, on 127.0.0.1:0 and the
in-memory store), reached through the real `HistoryClient`, which finds it through membership.
The router side is a fake of our own interface: `FakeRouterPool` implements the two methods the
hub calls on `RouterPool`. Deliveries are fed to the hub as a router's stream would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from services.common import wire
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryClient
from services.common.membership import MemberWatcher
from services.common.settings import Settings
from services.common.store.factory import build_membership_store, open_backend
from services.common.store.memory import memory_backend
from services.common.telemetry import new_registry
from services.edge.catchup import StreamPosition
from services.edge.domain import Delivery
from services.edge.history_reader import HistoryReader
from services.edge.hub import Hub
from services.edge.metrics import EdgeMetrics
from services.edge.wsproto import payload_of, text_frame
from services.history.server import running

TOKEN = "test-service-token"
CHANNEL = "session:s1"


# ---- fakes of our own interfaces -------------------------------------------------------------


class FakeRouterPool:
    """The part of RouterPool the hub uses: attach_soon (acknowledged at once, or when released),
    attach_waiter, and detach (which ends the waits of an attach still in flight with False)."""

    def __init__(self) -> None:
        self.attaches: list[str] = []
        self.detaches: list[str] = []
        self.waiting: dict[str, list[asyncio.Future[bool]]] = {}
        self.released = True

    def attach_soon(self, channel: str) -> asyncio.Future[bool]:
        self.attaches.append(channel)
        if self.released:
            return self._done(True)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(channel, []).append(fut)
        return fut

    def attach_waiter(self, channel: str) -> asyncio.Future[bool]:
        if channel not in self.waiting:
            return self._done(True)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting[channel].append(fut)
        return fut

    def release(self) -> None:
        self.released = True
        for futs in self.waiting.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(True)
        self.waiting.clear()

    def detach(self, channel: str) -> None:
        self.detaches.append(channel)
        for fut in self.waiting.pop(channel, []):
            if not fut.done():
                fut.set_result(False)

    @staticmethod
    def _done(result: bool) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.set_result(result)
        return fut


@dataclass(eq=False)
class RecordingSubscriber:
    """A Subscriber that records what the hub pushes and lets a test wait for it."""

    pushed: list[tuple[str, int, str, int]] = field(default_factory=list)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: bytes, priority: int, channel: str, offset: int,
              accepted: float = 0.0) -> bool:
        payload = payload_of(frame)
        assert text_frame(payload) == frame, "not one prepared text frame"
        self.pushed.append((payload.decode(), priority, channel, offset))
        self._grew.set()
        return False  # not written to a socket: nothing for the hub to count

    @property
    def offsets(self) -> list[int]:
        return [offset for _, _, _, offset in self.pushed]

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(frame) for frame, _, _, _ in self.pushed]

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.pushed) < count:
                self._grew.clear()
                await self._grew.wait()


# ---- fixtures --------------------------------------------------------------------------------


@dataclass
class HistoryNode:
    settings: Settings
    port: int
    _stack: contextlib.AsyncExitStack

    async def stop(self) -> None:
        await self._stack.aclose()


@dataclass
class Rig:
    hub: Hub
    pool: FakeRouterPool
    client: HistoryClient
    metrics: EdgeMetrics
    history: HistoryNode
    registry: Any
    bodies: dict[tuple[str, str, int], bytes] = field(default_factory=dict)  # (channel, epoch, offset)

    async def append(self, n: int, channel: str = CHANNEL, *, prefix: str = "e") -> list[Delivery]:
        """Append n events through the real client; return the deliveries a router would send."""
        events = []
        for _ in range(n):
            body = wire.encode_body("chat_message", {"content": "x"}, channel=channel)
            event_id = orjson.loads(body)["id"]
            events.append(hpb.Event(id=f"{prefix}-{event_id}", type="chat_message", body=body))
        got = await self.client.append(channel, events)
        out = []
        for ev, res in zip(events, got.results, strict=True):
            assert not res.duplicate
            self.bodies[(channel, got.epoch, res.offset)] = ev.body
            out.append(delivery(channel, ev.body, res.offset, got.epoch))
        return out

    def deliver(self, *deliveries: Delivery) -> None:
        for d in deliveries:
            self.hub.on_delivery(d)

    def sealed(self, channel: str, epoch: str, offset: int) -> str:
        return wire.seal(self.bodies[(channel, epoch, offset)], offset, epoch).decode()

    def repairs(self, result: str) -> float:
        return self.registry.get_sample_value("edge_gap_repairs_total", {"result": result}) or 0.0

    def counter(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    async def settled(self, timeout_s: float, channel: str = CHANNEL) -> None:
        """Wait until no repair runs on the channel and nothing is held."""
        await until(lambda: not self.hub.channels[channel].sync.repairing
                    and not self.hub.channels[channel].sync.pending, timeout_s)


async def until(check: Callable[[], bool], timeout_s: float) -> None:
    """Poll a condition of the hub (it signals nothing) until it holds; TimeoutError otherwise."""
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def delivery(channel: str, body: bytes, offset: int, epoch: str, priority: int = 2) -> Delivery:
    return Delivery(channel=channel, offset=offset, epoch=epoch,
                    frame=wire.seal(body, offset, epoch), priority=priority)


def ephemeral(channel: str = CHANNEL) -> Delivery:
    body = wire.encode_body("user_typing", {"is_typing": True}, channel=channel)
    return Delivery(channel=channel, offset=0, epoch="", frame=body, priority=3)


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(key_prefix: str, tu: float) -> AsyncIterator[MakeRig]:
    """Factory: a history server, a client that finds it through membership, and a hub."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Rig:
            fields: dict[str, Any] = {
                "node_id": f"history-{key_prefix}", "host": "127.0.0.1", "port": 0,
                "store_url": f"memory://{key_prefix}", "key_prefix": key_prefix,
                "service_token": TOKEN, "drain_grace_s": 0.2 * tu, "lease_refresh_s": 0.2 * tu,
                "lease_ttl_s": 2.0 * tu, "membership_poll_s": 0.05 * tu, "rpc_timeout_s": 2.0 * tu,
            }
            settings = Settings(**{**fields, **overrides})
            node_stack = contextlib.AsyncExitStack()
            stack.push_async_callback(node_stack.aclose)  # idempotent: a test may stop it first
            server = await node_stack.enter_async_context(running(settings))
            history = HistoryNode(settings, server.port, node_stack)

            backend = open_backend(settings)
            stack.push_async_callback(backend.aclose)
            watcher = MemberWatcher(build_membership_store(backend), "history",
                                    poll_s=settings.membership_poll_s)
            await watcher.start()
            stack.push_async_callback(watcher.aclose)
            client = HistoryClient(watcher, service_token=TOKEN, timeout_s=settings.rpc_timeout_s)
            stack.push_async_callback(client.aclose)

            registry = new_registry()
            metrics = EdgeMetrics(registry)
            pool = FakeRouterPool()
            hub = Hub(pool, HistoryReader(client), metrics, pending_max=100, attach_timeout_s=1.0 * tu)  # type: ignore[arg-type]
            stack.push_async_callback(hub.aclose)
            return Rig(hub, pool, client, metrics, history, registry)

        yield make


async def subscribed(rig: Rig, channel: str = CHANNEL) -> RecordingSubscriber:
    sub = RecordingSubscriber()
    await rig.hub.subscribe(sub, [channel])
    return sub


# ---- subscriptions ---------------------------------------------------------------------------


async def test_first_subscriber_attaches_last_one_detaches(make_rig: MakeRig) -> None:
    rig = await make_rig()
    a, b = RecordingSubscriber(), RecordingSubscriber()
    await rig.hub.subscribe(a, [CHANNEL])
    await rig.hub.subscribe(b, [CHANNEL])
    assert rig.pool.attaches == [CHANNEL]
    rig.hub.unsubscribe(a, [CHANNEL])
    assert rig.pool.detaches == []
    rig.hub.unsubscribe(b, [CHANNEL, "session:never"])
    assert rig.pool.detaches == [CHANNEL]
    assert CHANNEL not in rig.hub.channels
    (d,) = await rig.append(1)
    rig.deliver(d)  # nobody here: counted, not pushed
    assert rig.counter("edge_deliveries_total") == 1
    assert a.pushed == [] and b.pushed == []


async def test_later_subscriber_waits_for_the_attach(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    rig.pool.released = False
    first = asyncio.create_task(rig.hub.subscribe(RecordingSubscriber(), [CHANNEL]))
    await asyncio.sleep(0.02 * tu)
    second = asyncio.create_task(rig.hub.subscribe(RecordingSubscriber(), [CHANNEL]))
    await asyncio.sleep(0.05 * tu)
    assert not first.done() and not second.done()
    rig.pool.release()
    async with asyncio.timeout(1.0 * tu):
        await asyncio.gather(first, second)
    assert rig.pool.attaches == [CHANNEL]


async def test_subscribe_returns_when_the_attach_times_out(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    rig.pool.released = False  # no router acknowledges: the attach times out after 1 tu
    sub = RecordingSubscriber()
    async with asyncio.timeout(3.0 * tu):
        await rig.hub.subscribe(sub, [CHANNEL])
    assert sub in rig.hub.channels[CHANNEL].subscribers

    # While no router is up, the next connections are not held for another timeout each.
    started = asyncio.get_running_loop().time()
    await rig.hub.subscribe(RecordingSubscriber(), [CHANNEL])
    assert asyncio.get_running_loop().time() - started < 0.5 * tu
    assert rig.pool.attaches == [CHANNEL]


async def test_one_subscribe_waits_for_all_its_channels_at_once(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    live = await subscribed(rig, "session:live")
    rig.pool.released = False
    sub = RecordingSubscriber()
    task = asyncio.create_task(rig.hub.subscribe(sub, ["session:live", CHANNEL, "user:u1"]))
    await asyncio.sleep(0.1 * tu)
    assert not task.done()  # two channels are still attaching
    rig.pool.release()
    async with asyncio.timeout(1.0 * tu):
        states = await task
    assert [st.sync.channel for st in states] == ["session:live", CHANNEL, "user:u1"]
    assert rig.pool.attaches == ["session:live", CHANNEL, "user:u1"]
    assert all(sub in st.subscribers for st in states)
    assert live in rig.hub.channels["session:live"].subscribers


async def test_leaving_while_attaching_detaches_and_ends_the_wait(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    rig.pool.released = False
    sub = RecordingSubscriber()
    task = asyncio.create_task(rig.hub.subscribe(sub, [CHANNEL]))
    await asyncio.sleep(0.05 * tu)
    rig.hub.unsubscribe(sub, [CHANNEL])
    async with asyncio.timeout(0.5 * tu):
        await task
    assert rig.pool.detaches == [CHANNEL] and CHANNEL not in rig.hub.channels


# ---- in order, duplicates, ephemeral ---------------------------------------------------------


async def test_when_attached_calls_back_once_every_channel_is_live(make_rig: MakeRig, tu: float) -> None:
    """The wait a connection without a task uses: a callback instead of an await."""
    rig = await make_rig()
    await subscribed(rig, "session:live")
    rig.pool.released = False
    sub = RecordingSubscriber()
    states, waits = rig.hub.subscribe_nowait(sub, ["session:live", CHANNEL, "user:u1"])
    assert [st.sync.channel for st in states] == ["session:live", CHANNEL, "user:u1"]
    assert [st.sync.channel for st, _ in waits] == [CHANNEL, "user:u1"]  # the live one costs no wait
    called = asyncio.Event()
    rig.hub.when_attached(waits, called.set)
    await asyncio.sleep(0.1 * tu)
    assert not called.is_set()
    rig.pool.release()
    async with asyncio.timeout(0.5 * tu):
        await called.wait()
    assert not rig.hub.channels[CHANNEL].attaching
    assert rig.hub.subscribe_nowait(RecordingSubscriber(), [CHANNEL])[1] == []  # live: no wait


async def test_when_attached_calls_back_at_the_attach_timeout(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    rig.pool.released = False  # no router answers: the callback comes after 1 tu
    _, waits = rig.hub.subscribe_nowait(RecordingSubscriber(), [CHANNEL])
    called = asyncio.Event()
    started = asyncio.get_running_loop().time()
    rig.hub.when_attached(waits, called.set)
    async with asyncio.timeout(3.0 * tu):
        await called.wait()
    assert asyncio.get_running_loop().time() - started >= 0.9 * tu
    assert rig.hub.subscribe_nowait(RecordingSubscriber(), [CHANNEL])[1] == []  # given up on: no wait


async def test_a_cancelled_wait_never_calls_back(make_rig: MakeRig, tu: float) -> None:
    """A connection that goes away while its channels attach cancels its wait: no callback,
    neither when the router answers nor at the timeout."""
    rig = await make_rig()
    rig.pool.released = False
    _, waits = rig.hub.subscribe_nowait(RecordingSubscriber(), [CHANNEL])
    calls: list[None] = []
    cancel = rig.hub.when_attached(waits, lambda: calls.append(None))
    cancel()
    rig.pool.release()
    await asyncio.sleep(1.5 * tu)  # past the attach timeout too
    assert calls == []


async def test_in_order_deliveries_pass_through_once_to_every_subscriber(make_rig: MakeRig) -> None:
    rig = await make_rig()
    a, b = await subscribed(rig), await subscribed(rig)
    ds = await rig.append(3)
    rig.deliver(*ds)
    for sub in (a, b):
        assert sub.offsets == [1, 2, 3]
        assert [frame for frame, _, _, _ in sub.pushed] == [d.frame.decode() for d in ds]
        assert {(prio, ch) for _, prio, ch, _ in sub.pushed} == {(2, CHANNEL)}
        assert [f["offset"] for f in sub.frames] == [1, 2, 3]
    assert rig.hub.channels[CHANNEL].sync.position == StreamPosition(3, ds[0].epoch)
    assert rig.counter("edge_deliveries_total") == 3
    assert rig.counter("edge_duplicate_deliveries_total") == 0
    assert rig.registry.get_sample_value("edge_gap_repairs_total", {"result": "ok"}) is None


async def test_first_delivery_sets_the_starting_point(make_rig: MakeRig) -> None:
    # A channel subscribed mid-stream starts from whatever arrives first; it does not read back.
    rig = await make_rig()
    ds = await rig.append(5)
    sub = await subscribed(rig)
    rig.deliver(ds[3], ds[4])
    assert sub.offsets == [4, 5]
    assert rig.repairs("ok") == 0


async def test_duplicates_are_dropped_and_counted(make_rig: MakeRig) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(3)
    rig.deliver(*ds)
    rig.deliver(ds[1], ds[2], ds[0], ds[2])
    assert sub.offsets == [1, 2, 3]
    assert rig.counter("edge_duplicate_deliveries_total") == 4
    (d4,) = await rig.append(1)
    rig.deliver(d4, d4)
    assert sub.offsets == [1, 2, 3, 4]
    assert rig.counter("edge_duplicate_deliveries_total") == 5


async def test_ephemeral_deliveries_pass_straight_through(make_rig: MakeRig) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    typing = ephemeral()
    rig.deliver(typing, typing)  # no offset, no dedupe: both go
    ds = await rig.append(2)
    rig.deliver(ds[0], typing, ds[1])
    assert sub.offsets == [0, 0, 1, 0, 2]
    assert sub.pushed[0] == (typing.frame.decode(), 3, CHANNEL, 0)
    assert rig.hub.channels[CHANNEL].sync.offset == 2
    assert rig.counter("edge_duplicate_deliveries_total") == 0


# ---- gap repair ------------------------------------------------------------------------------


async def test_gap_is_repaired_from_history_in_order_exactly_once(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(5)
    rig.deliver(ds[0], ds[1], ds[4])  # 3 and 4 never come from the router
    await sub.wait_for(5, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 3, 4, 5]
    epoch = ds[0].epoch
    # Repaired events are the frames history sealed, byte for byte what a router would send.
    assert [frame for frame, _, _, _ in sub.pushed] == [rig.sealed(CHANNEL, epoch, o) for o in range(1, 6)]
    assert rig.repairs("ok") == 1
    assert rig.hub.channels[CHANNEL].sync.offset == 5


async def test_deliveries_during_a_repair_are_held_then_delivered_once(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(7)
    rig.deliver(ds[0], ds[1], ds[4])
    await asyncio.sleep(0)  # the repair task starts its Read
    state = rig.hub.channels[CHANNEL].sync
    assert state.repairing
    # While the Read is in flight: what follows, late copies of what is being repaired, a dup.
    rig.deliver(ds[5], ds[3], ds[6], ds[1], ds[4], ephemeral())
    assert state.repairing  # really held, not handled in order
    assert sub.offsets == [1, 2, 0]  # the ephemeral one is not held
    await sub.wait_for(8, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert [o for o in sub.offsets if o] == [1, 2, 3, 4, 5, 6, 7]
    assert rig.repairs("ok") == 1
    assert rig.counter("edge_duplicate_deliveries_total") == 3  # 4 (read from history), 2, 5


async def test_a_second_gap_seen_during_a_repair_is_repaired_next(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(9)
    rig.deliver(ds[0], ds[2])  # gap: 2
    await asyncio.sleep(0)
    rig.deliver(ds[3], ds[8])  # 4 follows 3; then a gap: 5..8
    await sub.wait_for(9, 3.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == list(range(1, 10))
    assert rig.repairs("ok") == 2


async def test_long_gap_is_read_in_pages(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig(history_read_limit=100)  # the hub asks 500 a page; the server gives 100
    sub = await subscribed(rig)
    ds = await rig.append(350)
    rig.deliver(ds[0], ds[349])
    await sub.wait_for(350, 5.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == list(range(1, 351))
    assert rig.repairs("ok") == 1


async def test_gap_in_an_epoch_history_no_longer_has_gives_up_and_goes_on(
    make_rig: MakeRig, tu: float,
) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    await rig.append(5)
    # Deliveries of an epoch history does not know (it lost the channel since).
    body = wire.encode_body("chat_message", {"content": "old"}, channel=CHANNEL)
    gone = {o: delivery(CHANNEL, body, o, "gone") for o in (1, 2, 5, 6)}
    rig.deliver(gone[1], gone[2], gone[5])
    await asyncio.sleep(0)
    rig.deliver(gone[6], gone[2])  # held meanwhile, a late duplicate among them
    await sub.wait_for(4, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 5, 6]  # the gap is reported (metric), not hidden by a stall
    assert rig.repairs("incomplete") == 1
    assert rig.counter("edge_duplicate_deliveries_total") == 1


async def test_gap_below_what_history_still_holds_delivers_what_is_left(
    make_rig: MakeRig, tu: float,
) -> None:
    rig = await make_rig(history_max_len=3)
    sub = await subscribed(rig)
    ds = await rig.append(8)  # history holds 6..8 only
    rig.deliver(ds[0], ds[7])
    await sub.wait_for(4, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 6, 7, 8]  # 2..5 are gone for good: reported, then on in order
    assert rig.repairs("incomplete") == 1


# ---- resync ----------------------------------------------------------------------------------


async def test_resync_delivers_what_was_appended_without_deliveries(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(2)
    rig.deliver(*ds)
    await rig.append(3)  # 3..5 appended while this edge was not attached
    rig.hub.resync([CHANNEL])
    await sub.wait_for(5, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 3, 4, 5]
    assert rig.repairs("ok") == 1
    (d6,) = await rig.append(1)
    rig.deliver(d6)  # the stream goes on from the resynced point
    assert sub.offsets == [1, 2, 3, 4, 5, 6]


async def test_resync_when_current_delivers_nothing(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    rig.deliver(*await rig.append(2))
    rig.hub.resync([CHANNEL, "session:unknown"])
    await rig.settled(2.0 * tu)
    await until(lambda: rig.repairs("current") == 1, 2.0 * tu)
    assert sub.offsets == [1, 2]


async def test_resync_of_a_channel_that_saw_nothing_does_not_read(make_rig: MakeRig) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    await rig.append(3)
    rig.hub.resync([CHANNEL])
    assert not rig.hub.channels[CHANNEL].sync.repairing
    assert sub.pushed == []


async def test_deliveries_during_a_resync_are_held_and_ordered(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(6)
    rig.deliver(ds[0])
    rig.hub.resync([CHANNEL])
    await asyncio.sleep(0)
    rig.deliver(ds[5], ds[4])  # the re-attached router's stream resumes meanwhile
    await sub.wait_for(6, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 3, 4, 5, 6]


# ---- epochs ----------------------------------------------------------------------------------


async def test_epoch_change_resets_the_channel(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    old = await rig.append(3)
    rig.deliver(*old)
    # The store loses the channel: history starts it again under a new epoch, from offset 1.
    memory_backend(rig.history.settings.store_url).data["streams"].clear()
    new = await rig.append(4)
    assert new[0].epoch != old[0].epoch
    rig.deliver(new[0], new[1], new[0])
    assert sub.offsets == [1, 2, 3, 1, 2]
    assert rig.counter("edge_duplicate_deliveries_total") == 1
    assert rig.hub.channels[CHANNEL].sync.position == StreamPosition(2, new[0].epoch)
    rig.deliver(new[3])  # a gap in the new epoch is repaired from the new epoch
    await sub.wait_for(7, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 3, 1, 2, 3, 4]
    assert [f["epoch"] for f in sub.frames[3:]] == [new[0].epoch] * 4
    assert rig.repairs("ok") == 1


# ---- history down ----------------------------------------------------------------------------


async def test_history_down_gap_repair_fails_without_losing_later_deliveries(
    make_rig: MakeRig, tu: float,
) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(7)
    rig.deliver(ds[0], ds[1])
    await rig.history.stop()
    rig.deliver(ds[4])  # gap: 3, 4
    await asyncio.sleep(0)
    rig.deliver(ds[5], ds[1])  # held while the repair fails; 2 is a late duplicate
    await sub.wait_for(4, 3.0 * tu)
    await rig.settled(3.0 * tu)
    rig.deliver(ds[6])
    assert sub.offsets == [1, 2, 5, 6, 7]  # 2 is not delivered again
    assert rig.repairs("failed") == 1
    assert rig.counter("edge_duplicate_deliveries_total") == 1
    assert rig.repairs("ok") == 0


async def test_history_down_resync_fails_quietly(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(3)
    rig.deliver(ds[0])
    await rig.history.stop()
    rig.hub.resync([CHANNEL])
    await rig.settled(3.0 * tu)
    assert rig.repairs("failed") == 1
    rig.deliver(ds[1], ds[2])
    assert sub.offsets == [1, 2, 3]


async def test_resync_asked_during_a_repair_catches_up_after_it(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(4)
    rig.deliver(ds[0], ds[3])  # gap: the repair reads 2..3 only
    await asyncio.sleep(0)
    assert rig.hub.channels[CHANNEL].sync.repairing
    await rig.append(2)  # 5..6 appended while this edge re-attaches: no delivery will show them
    rig.hub.resync([CHANNEL])
    await sub.wait_for(6, 2.0 * tu)
    await rig.settled(2.0 * tu)
    assert sub.offsets == [1, 2, 3, 4, 5, 6]


async def test_close_during_a_repair_delivers_nothing_more(make_rig: MakeRig, tu: float) -> None:
    rig = await make_rig()
    sub = await subscribed(rig)
    ds = await rig.append(5)
    rig.deliver(ds[0], ds[4])
    await asyncio.sleep(0)
    assert rig.hub.channels[CHANNEL].sync.repairing
    await rig.hub.aclose()
    await asyncio.sleep(0.2 * tu)  # a leaked task would deliver 2..5 now
    assert sub.offsets == [1]
    assert rig.repairs("cancelled") == 1 and rig.repairs("ok") == 0
