"""The edge <-> router stream link (length-prefixed protobuf over TCP), against real routers.

In-process: a history server and routers (`services.router.server.running`) on 127.0.0.1 with a
real redis-server, the edge's real `RouterPool`, and a raw socket client that speaks the frame
format for what a well-behaved edge never sends (a wrong token, an oversize frame, silence).
Real processes (`DevCluster`): an edge forced onto gRPC beside a link edge, through a router kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from switchboard_client import SwitchboardClient

from services.common.auth import mint_token
from services.common.framing import HEADER
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.membership import LINK_ROLE
from services.common.rpc import credential_metadata, insecure_channel
from services.common.settings import Settings
from services.common.store.base import MembershipStore
from services.common.store.factory import build_membership_store, open_backend
from services.devcluster import DevCluster, free_port
from services.edge.domain import Delivery, Event
from services.edge.routing_client import LinkOptions, RouterPool
from services.history.server import running as running_history
from services.router.server import RunningRouter
from services.router.server import running as running_router
from tests.support.redis_server import RedisServer

TOKEN = "link-test-service-token"


@dataclass
class Sink:
    """The edge's DeliverySink: what the hub would receive."""

    deliveries: list[Delivery] = field(default_factory=list)
    resyncs: list[list[str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_delivery(self, d: Delivery) -> None:
        self.deliveries.append(d)
        self.changed.set()

    def resync(self, channels: list[str]) -> None:
        self.resyncs.append(channels)
        self.changed.set()

    async def until(self, predicate: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class Rig:
    """A history server and routers in this process, sharing one redis-server."""

    def __init__(self, redis_url: str, key_prefix: str, tu: float) -> None:
        self.redis_url, self.key_prefix, self.tu = redis_url, key_prefix, tu
        self.routers: dict[str, RunningRouter] = {}
        self.metrics_ports: dict[str, int] = {}
        self._stacks: dict[str, contextlib.AsyncExitStack] = {}
        self.backend = open_backend(self.settings("probe"))
        self.members: MembershipStore = build_membership_store(self.backend)

    def settings(self, node_id: str, **kw: Any) -> Settings:
        tu = self.tu
        return Settings(**{
            "node_id": node_id, "port": 0, "store_url": self.redis_url, "key_prefix": self.key_prefix,
            "service_token": TOKEN, "jwt_secret": "unused", "lease_refresh_s": 0.2 * tu,
            "lease_ttl_s": 2.0 * tu, "membership_poll_s": 0.1 * tu, "drain_grace_s": 0.5 * tu,
            "link_heartbeat_s": 0.1 * tu, "link_idle_timeout_s": 0.5 * tu, "log_json": False, **kw})

    async def start(self, node_id: str, role: str = "router", **kw: Any) -> RunningRouter | None:
        stack = contextlib.AsyncExitStack()
        self._stacks[node_id] = stack
        if role == "history":
            await stack.enter_async_context(running_history(self.settings(node_id, **kw)))
            return None
        self.metrics_ports[node_id] = port = free_port()
        router = await stack.enter_async_context(running_router(self.settings(node_id, metrics_port=port, **kw)))
        self.routers[node_id] = router
        return router

    async def stop(self, node_id: str) -> None:
        self.routers.pop(node_id, None)
        await self._stacks.pop(node_id).aclose()

    async def aclose(self) -> None:
        for node_id in reversed(list(self._stacks)):
            await self.stop(node_id)
        await self.backend.aclose()

    def link_options(self, max_frame_bytes: int = 1 << 20) -> LinkOptions:
        return LinkOptions(max_frame_bytes=max_frame_bytes, heartbeat_s=0.1 * self.tu,
                           idle_timeout_s=0.5 * self.tu)

    async def pool(self, stack: contextlib.AsyncExitStack, sink: Sink, *, link: bool = True,
                   edge_id: str = "edge-1") -> RouterPool:
        """An edge's router pool, connected to every live router."""
        pool = RouterPool(edge_id, service_token=TOKEN, queue_max=1000, reconnect_max_s=0.2 * self.tu,
                          publish_timeout_s=5 * self.tu, link=self.link_options() if link else None)
        pool.register(sink)
        stack.push_async_callback(pool.aclose)
        await self.refresh(pool)
        async with asyncio.timeout(5 * self.tu):
            for r in pool.links.values():
                await r.connected.wait()
        return pool

    async def refresh(self, pool: RouterPool) -> None:
        """What the edge's membership watcher does on a poll."""
        pool.set_routers(await self.members.members("router"), await self.members.members(LINK_ROLE))

    async def stats(self, node_id: str) -> pb.StatsResponse:
        async with insecure_channel(f"127.0.0.1:{self.routers[node_id].port}") as channel:
            stub = pb_grpc.RouterStub(channel)
            response: pb.StatsResponse = await stub.Stats(
                pb.StatsRequest(), metadata=credential_metadata(TOKEN), timeout=2 * self.tu)
            return response

    async def edges_become(self, node_id: str, n: int) -> None:
        """The router's count of connected edges reaches n (polled: it has no change event)."""
        deadline = asyncio.get_running_loop().time() + 5 * self.tu
        while (await self.stats(node_id)).edges_connected != n:
            assert asyncio.get_running_loop().time() < deadline, f"{node_id} never had {n} edges"
            await asyncio.sleep(0.02)

    def metric(self, node_id: str, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_ports[node_id]}/metrics"
        with urllib.request.urlopen(url, timeout=2 * self.tu) as r:
            text = r.read().decode()
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


@pytest.fixture
async def rig(redis_server: RedisServer, key_prefix: str, tu: float) -> AsyncIterator[Rig]:
    rig = Rig(redis_server.url, key_prefix, tu)
    try:
        await rig.start("history-1", role="history")
        yield rig
    finally:
        await rig.aclose()


def event(n: int) -> Event:
    return Event(id=uuid.uuid4().hex, type="chat_message", body=json.dumps({"n": n}).encode())


# ---- a raw client speaking the frame format --------------------------------------------------


class RawEdge:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawEdge:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, message: pb.EdgeMessage) -> None:
        payload = message.SerializeToString()
        self.writer.write(HEADER.pack(len(payload)) + payload)

    async def receive(self) -> pb.RouterMessage | None:
        """The next message that is not a heartbeat; None when the router closed the link."""
        while True:
            try:
                (size,) = HEADER.unpack(await self.reader.readexactly(4))
                message = pb.RouterMessage.FromString(await self.reader.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if not (message.HasField("batch") and not message.batch.messages):
                return message

    async def closed_by_router(self, timeout_s: float) -> bool:
        async with asyncio.timeout(timeout_s):
            while await self.receive() is not None:
                pass
        return True

    def close(self) -> None:
        self.writer.close()


def hello(edge_id: str = "raw-edge", token: str = TOKEN) -> pb.EdgeMessage:
    return pb.EdgeMessage(hello=pb.Hello(edge_id=edge_id, token=token))


# ---- in-process routers ----------------------------------------------------------------------


async def test_publish_ack_and_delivery_over_the_link(rig: Rig, tu: float) -> None:
    router = await rig.start("router-1")
    assert router is not None and router.link_port > 0
    assert (await rig.members.members(LINK_ROLE)) == {"router-1": f"127.0.0.1:{router.link_port}"}
    sink = Sink()
    async with contextlib.AsyncExitStack() as stack:
        pool = await rig.pool(stack, sink)
        assert pool.links["router-1"].link_address == f"127.0.0.1:{router.link_port}"
        assert await pool.attach("session:a", 5 * tu)
        results = [await pool.publish("session:a", event(i)) for i in range(1, 4)]
        assert [r.offset for r in results] == [1, 2, 3] and len({r.epoch for r in results}) == 1
        # a unit of several events, acknowledged with every offset
        unit = await pool.publish("session:a", event(4), more=[event(5), event(6)])
        assert (unit.offset, [o for o, _ in unit.more]) == (4, [5, 6])
        await sink.until(lambda: len(sink.deliveries) == 6, 5 * tu)
        assert [(d.channel, d.offset) for d in sink.deliveries] == [("session:a", i) for i in range(1, 7)]
        assert [json.loads(d.frame)["n"] for d in sink.deliveries] == [1, 2, 3, 4, 5, 6]
        assert (await rig.stats("router-1")).edges_connected == 1


async def test_an_edge_forced_onto_grpc_and_a_link_edge_share_a_channel(rig: Rig, tu: float) -> None:
    await rig.start("router-1")
    linked, forced = Sink(), Sink()
    async with contextlib.AsyncExitStack() as stack:
        a = await rig.pool(stack, linked, edge_id="edge-link")
        b = await rig.pool(stack, forced, link=False, edge_id="edge-grpc")
        assert a.links["router-1"].link_address and b.links["router-1"].link_address is None
        assert await a.attach("session:s", 5 * tu) and await b.attach("session:s", 5 * tu)
        await a.publish("session:s", event(1))
        await b.publish("session:s", event(2))
        for sink in (linked, forced):
            await sink.until(lambda s=sink: len(s.deliveries) == 2, 5 * tu)  # type: ignore[misc]
            assert [d.offset for d in sink.deliveries] == [1, 2]
        assert (await rig.stats("router-1")).edges_connected == 2


async def test_a_router_without_links_is_reached_over_grpc(rig: Rig, tu: float) -> None:
    """An older router (no link record) during a rolling upgrade: new edges use Connect."""
    router = await rig.start("router-old", link_port=-1)
    assert router is not None and router.link_port == 0
    assert await rig.members.members(LINK_ROLE) == {}
    sink = Sink()
    async with contextlib.AsyncExitStack() as stack:
        pool = await rig.pool(stack, sink)
        assert pool.links["router-old"].link_address is None
        assert await pool.attach("session:o", 5 * tu)
        assert (await pool.publish("session:o", event(1))).offset == 1
        await sink.until(lambda: len(sink.deliveries) == 1, 5 * tu)


async def test_a_wrong_token_is_refused_counted_and_never_served(rig: Rig, tu: float) -> None:
    router = await rig.start("router-1")
    assert router is not None
    edge = await RawEdge.connect(router.link_port)
    try:
        edge.send(hello(token="not-the-token"))
        edge.send(pb.EdgeMessage(attach=pb.Attach(channels=["session:x"])))
        assert await edge.closed_by_router(5 * tu)
    finally:
        edge.close()
    assert rig.metric("router-1", 'router_edge_links_refused_total{reason="token"}') == 1
    assert (await rig.stats("router-1")).edges_connected == 0


async def test_no_hello_in_time_is_refused(rig: Rig, tu: float) -> None:
    router = await rig.start("router-1")
    assert router is not None
    edge = await RawEdge.connect(router.link_port)
    try:
        assert await edge.closed_by_router(5 * tu)  # silent: closed after the hello timeout
    finally:
        edge.close()
    assert rig.metric("router-1", 'router_edge_links_refused_total{reason="hello"}') == 1


async def test_an_oversize_frame_drops_the_link_and_its_attaches(rig: Rig, tu: float) -> None:
    router = await rig.start("router-1", link_max_frame_bytes=4096)
    assert router is not None
    edge = await RawEdge.connect(router.link_port)
    try:
        edge.send(hello())
        edge.send(pb.EdgeMessage(attach=pb.Attach(channels=["session:big"])))
        reply = await asyncio.wait_for(edge.receive(), 5 * tu)
        assert reply is not None and list(reply.attached.channels) == ["session:big"]
        assert (await rig.stats("router-1")).edges_connected == 1
        edge.writer.write(HEADER.pack(4097) + b"x" * 100)  # announces more than the limit
        assert await edge.closed_by_router(5 * tu)
    finally:
        edge.close()
    await rig.edges_become("router-1", 0)


async def test_an_edge_that_stops_reading_is_dropped_when_its_link_overflows(rig: Rig, tu: float) -> None:
    """A stuck edge (alive: it keeps sending heartbeats, but reads nothing) fills its socket,
    then its link's bounded outbox: the router drops that link and counts it, and the other
    edge on the channel still gets every event, in order."""
    router = await rig.start("router-1", router_link_queue_max=16)
    assert router is not None
    stuck = await RawEdge.connect(router.link_port)
    sink = Sink()

    async def heartbeats() -> None:
        while True:
            stuck.send(pb.EdgeMessage(batch=pb.EdgeBatch()))
            await asyncio.sleep(0.05 * tu)

    beating = asyncio.create_task(heartbeats())
    try:
        stuck.send(hello("edge-stuck"))
        stuck.send(pb.EdgeMessage(attach=pb.Attach(channels=["session:flood"])))
        reply = await asyncio.wait_for(stuck.receive(), 5 * tu)
        assert reply is not None and list(reply.attached.channels) == ["session:flood"]
        async with contextlib.AsyncExitStack() as stack:
            pool = await rig.pool(stack, sink, edge_id="edge-ok")
            assert await pool.attach("session:flood", 5 * tu)
            body = json.dumps({"pad": "x" * 60_000})
            n = 0
            while rig.metric("router-1", "router_edge_links_dropped_total") == 0:
                assert n < 2_000, "the stuck edge's link never overflowed"
                n += 1
                await pool.publish("session:flood", Event(id=uuid.uuid4().hex, type="chat_message",
                                                          body=body.encode()))
            await sink.until(lambda: len(sink.deliveries) == n, 5 * tu)
            assert [d.offset for d in sink.deliveries] == list(range(1, n + 1))
            await rig.edges_become("router-1", 1)  # the stuck one is gone, edge-ok stays
            assert sink.resyncs == []  # edge-ok's own link was never dropped
    finally:
        beating.cancel()
        stuck.close()
    assert rig.metric("router-1", "router_edge_links_dropped_total") == 1


async def test_a_silent_edge_is_dropped_after_the_idle_timeout(rig: Rig, tu: float) -> None:
    router = await rig.start("router-1")
    assert router is not None
    edge = await RawEdge.connect(router.link_port)
    try:
        edge.send(hello())  # then nothing, not even heartbeats
        await rig.edges_become("router-1", 1)
        assert await edge.closed_by_router(5 * tu)  # within link_idle_timeout_s (0.5 tu) + a beat
    finally:
        edge.close()
    assert (await rig.stats("router-1")).edges_connected == 0


async def test_an_idle_link_stays_up_on_heartbeats(rig: Rig, tu: float) -> None:
    await rig.start("router-1")
    sink = Sink()
    async with contextlib.AsyncExitStack() as stack:
        pool = await rig.pool(stack, sink)
        assert await pool.attach("session:quiet", 5 * tu)
        await asyncio.sleep(2.0 * tu)  # four idle timeouts without traffic
        assert sink.resyncs == []  # never reconnected
        assert (await pool.publish("session:quiet", event(1))).offset == 1


async def test_a_stopped_router_fails_over_and_the_edge_resyncs(rig: Rig, tu: float) -> None:
    await rig.start("router-1")
    await rig.start("router-2")
    sink = Sink()
    channels = [f"session:c{i}" for i in range(8)]
    async with contextlib.AsyncExitStack() as stack:
        pool = await rig.pool(stack, sink)
        for c in channels:
            assert await pool.attach(c, 5 * tu)
        on_1 = pool.channels_on("router-1")
        assert on_1 and set(pool.channels_on("router-2")) | set(on_1) == set(channels)
        await rig.stop("router-1")
        await rig.refresh(pool)  # the membership poll that sees router-1 gone
        assert set(pool.channels_on("router-2")) == set(channels)
        await sink.until(lambda: {c for r in sink.resyncs for c in r} >= set(on_1), 5 * tu)
        for i, c in enumerate(channels):
            assert (await pool.publish(c, event(i))).offset >= 1
        await sink.until(lambda: {d.channel for d in sink.deliveries} == set(channels), 5 * tu)


async def test_a_lost_link_reconnects_and_resyncs_its_channels(rig: Rig, tu: float) -> None:
    """The router's side of the link goes away (its session is ended) while it stays in the ring:
    the edge reconnects with backoff, re-attaches and asks for a resync."""
    router = await rig.start("router-1", link_idle_timeout_s=0.3 * tu, link_heartbeat_s=5.0 * tu)
    assert router is not None
    sink = Sink()
    async with contextlib.AsyncExitStack() as stack:
        pool = await rig.pool(stack, sink)
        assert await pool.attach("session:r", 5 * tu)
        # The router's heartbeats come every 5 tu, its idle timeout is 0.3 tu while the edge
        # beats every 0.1 tu: the router keeps the link; the edge (idle timeout 0.5 tu) does not,
        # since nothing comes down. It drops the link and reconnects, again and again.
        await sink.until(lambda: ["session:r"] in sink.resyncs, 5 * tu)
        async with asyncio.timeout(5 * tu):
            await pool.links["router-1"].connected.wait()
        assert (await pool.publish("session:r", event(1))).offset == 1


# ---- real processes --------------------------------------------------------------------------


async def test_link_and_grpc_edges_through_a_router_kill(tmp_path: Path, tu: float) -> None:
    """A rolling upgrade's mix: one edge on stream links, one forced onto gRPC; a router is killed
    (kill -9) and both edges fail over to the other router, re-attach and keep delivering."""
    env = {"SWITCHBOARD_ALLOW_ANY_SESSION": "false", "SWITCHBOARD_LOG_JSON": "true"}
    cluster = DevCluster(edges=1, routers=2, port=0, workdir=tmp_path, env=env)
    clients: list[SwitchboardClient] = []
    with cluster:
        forced = cluster.spawn("edge", env={"SWITCHBOARD_ROUTER_TRANSPORT": "grpc"})
        cluster.wait_ready(forced)
        edges = cluster.by_role("edge")
        sid = "s-" + uuid.uuid4().hex[:8]
        try:
            for i, edge in enumerate(edges):
                token = mint_token(cluster.jwt_secret, f"u{i}", sessions=[sid], ttl_s=600)
                c = SwitchboardClient(f"ws://127.0.0.1:{edge.port}/api/ws/chat/{sid}", token, session_id=sid)
                clients.append(c)
                await c.connect()
            await _chat_and_collect(clients, "before", tu)
            cluster.by_role("router")[0].kill()
            await _chat_and_collect(clients, "after", tu)
        finally:
            for c in clients:
                await c.close()
        transports = {e.name: _transports(e.log_path) for e in edges}
    assert transports == {"edge-1": {"link"}, "edge-2": {"grpc"}}, transports


async def _chat_and_collect(clients: list[SwitchboardClient], text: str, tu: float) -> None:
    for c in clients:
        await c.chat(f"{text} from {id(c)}")
    for c in clients:
        got: set[str] = set()
        async with asyncio.timeout(20 * tu):
            while len(got) < len(clients):
                ev = await c.next_event(20 * tu)
                if ev.get("type") == "chat_message" and ev["payload"]["content"].startswith(text):
                    got.add(ev["payload"]["content"])


def _transports(log_path: Path) -> set[str]:
    found = set()
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "router_stream_open":
                found.add(record["transport"])
    return found
