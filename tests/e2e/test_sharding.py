"""Channels are owned by one router each (rendezvous hashing); adding a router moves only the
channels it now wins, and delivery continues."""

from __future__ import annotations

import asyncio
import time

from grpc import aio

from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.rpc import credential_metadata
from services.common.settings import DEV_SERVICE_TOKEN
from services.common.sharding import owner_of
from tests.e2e.conftest import collect, token_for

N_CHANNELS = 40


async def _published_by(cluster, channels: list[str]) -> dict[str, dict[str, int]]:
    """router name -> channel -> events it published on that channel as the owner."""
    out: dict[str, dict[str, int]] = {}
    for router in cluster.by_role("router"):
        async with aio.insecure_channel(f"127.0.0.1:{router.port}") as ch:
            stub = pb_grpc.RouterStub(ch)
            out[router.name] = {}
            for c in channels:
                resp = await stub.Owner(pb.OwnerRequest(channel=c), timeout=5,
                                        metadata=credential_metadata(DEV_SERVICE_TOKEN))
                out[router.name][c] = resp.published
    return out


async def _edges_seen_by(cluster, router_port: int) -> int:
    async with aio.insecure_channel(f"127.0.0.1:{router_port}") as ch:
        resp = await pb_grpc.RouterStub(ch).Stats(pb.StatsRequest(), timeout=5,
                                                  metadata=credential_metadata(DEV_SERVICE_TOKEN))
        return resp.edges_connected


async def test_each_channel_has_one_owner_and_adding_a_router_moves_few(
        make_cluster, clients, tu) -> None:
    cluster = make_cluster(routers=4, edges=2)
    sessions = [f"shard-{i}" for i in range(N_CHANNELS)]
    channels = [f"session:{s}" for s in sessions]
    subscriber = clients(f"ws://127.0.0.1:{cluster.by_role('edge')[1].port}/ws/chat/{sessions[0]}",
                         token_for(cluster, "watcher", sessions), channels=channels)
    sender = clients(f"ws://127.0.0.1:{cluster.by_role('edge')[0].port}/ws/chat/{sessions[0]}",
                     token_for(cluster, "sender", sessions))
    await subscriber.connect()
    await sender.connect()

    async def round_of(label: str) -> None:
        for c in channels:
            await sender.chat(f"{label} {c}", channel=c)
        got = await collect(subscriber, N_CHANNELS, {"chat_message"}, 10 * tu)
        assert sorted(e["payload"]["content"] for e in got) == sorted(f"{label} {c}" for c in channels)

    await round_of("one")
    routers = {p.name for p in cluster.by_role("router")}
    before = await _published_by(cluster, channels)
    for c in channels:
        owners = [r for r in routers if before[r][c] > 0]
        assert owners == [owner_of(c, routers)], (c, owners)
    assert len({owner_of(c, routers) for c in channels}) == 4  # 40 channels spread over 4

    new = cluster.spawn("router")
    cluster.wait_ready(new)
    deadline = time.monotonic() + 15 * tu
    while await _edges_seen_by(cluster, new.port) < 2:  # both edges opened a stream to it
        assert time.monotonic() < deadline, "edges did not connect to the new router"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5 * tu)  # every router's membership view includes the new router

    await round_of("two")
    after = await _published_by(cluster, channels)
    routers_now = routers | {new.name}
    moved = [c for c in channels if owner_of(c, routers_now) != owner_of(c, routers)]
    assert all(owner_of(c, routers_now) == new.name for c in moved)  # only to the new router
    assert 0 < len(moved) <= N_CHANNELS // 2, moved  # about 1/5 of them, not a reshuffle
    for c in channels:
        owner = owner_of(c, routers_now)
        expected_new = after[new.name][c]
        if c in moved:
            assert expected_new == 1 and after[owner_of(c, routers)][c] == 1
        else:
            assert expected_new == 0 and after[owner][c] == 2
