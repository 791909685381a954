"""A real Prometheus scrapes every tier of a real cluster: the series the dashboards and alerts
use exist, move with traffic, and `up` follows a killed process."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import httpx
import websockets
from switchboard_client import Publisher

from services.devcluster import HOST, DevCluster
from tests.e2e.conftest import chat_url, collect, token_for
from tests.support.prometheus import Prometheus


def _targets(cluster: DevCluster) -> list[tuple[str, str]]:
    return [(p.role, f"{HOST}:{p.metrics_port}") for p in cluster.procs]


def _one(result: list[dict]) -> float:  # type: ignore[type-arg]
    assert len(result) == 1, result
    return float(result[0]["value"][1])


async def _traffic(cluster: DevCluster, sender, sid: str, stop: asyncio.Event) -> int:  # type: ignore[no-untyped-def]
    """Chat messages from a client and HTTP publishes, ten a second, bounded (400, 40 s)."""
    edge = cluster.by_role("edge")[0]
    sent = 0
    async with Publisher(f"http://{HOST}:{edge.port}",
                         token_for(cluster, "backend", scopes=["publish"])) as http:
        for i in range(200):
            if stop.is_set():
                break
            await sender.chat(f"client {i}")
            await http.publish(f"session:{sid}", "chat_message", {"content": f"http {i}"})
            sent += 2
            await asyncio.sleep(0.1)
    return sent


async def test_prometheus_sees_every_tier_move_and_a_killed_edge_go_down(
        make_cluster, clients, sid, tu, tmp_path: Path) -> None:
    cluster = make_cluster()
    edge1, edge2 = cluster.by_role("edge")
    subscribers = []
    for i, edge in enumerate((0, 0, 1)):
        c = clients(chat_url(cluster, edge, sid), token_for(cluster, f"u{i}", [sid]),
                    session_id=sid, reconnect=False)
        await c.connect()
        subscribers.append(c)
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(cluster, subscribers[0], sid, stop))
    prom = Prometheus(_targets(cluster), tmp_path / "prometheus")
    await asyncio.to_thread(prom.start)
    try:
        async def wait(q: str, pred, timeout_s: float = 30 * tu) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
            return await asyncio.to_thread(prom.wait_for, q, pred, timeout_s)

        # every target is scraped, with its tier label
        up = await wait("up", lambda r: len(r) == 5 and all(x["value"][1] == "1" for x in r))
        assert sorted(x["metric"]["tier"] for x in up) == ["edge", "edge", "history", "router", "router"]
        cpu = await wait("count by (tier) (process_cpu_seconds_total)", lambda r: len(r) == 3)
        assert {x["metric"]["tier"]: x["value"][1] for x in cpu} == {
            "edge": "2", "router": "2", "history": "1"}
        await wait("min(edge_ready)", lambda r: r and r[0]["value"][1] == "1")

        # traffic moves the main series
        await wait("sum(rate(edge_frames_out_total[15s]))", lambda r: r and float(r[0]["value"][1]) > 0)
        await wait('sum(rate(edge_frames_out_total{lane="durable"}[15s]))',
                   lambda r: r and float(r[0]["value"][1]) > 0)
        connected = await wait("sum(edge_connections_active)", lambda r: r and r[0]["value"][1] == "3")
        assert _one(connected) == 3
        p99 = await wait(
            "histogram_quantile(0.99, sum by (le) (rate(edge_delivery_latency_seconds_bucket[15s])))",
            lambda r: r and not math.isnan(float(r[0]["value"][1])))
        assert _one(p99) > 0
        for series in ('router_publishes_total{result="ok"}', 'history_appends_total{result="ok"}',
                       'history_append_batch_size_count{tier="router"}',  # append_via=store: the router appends
                       'router_history_append_duration_seconds_count{tier="router"}',
                       'edge_publishes_total{source="http",result="ok"}',
                       'edge_publishes_total{source="client",result="ok"}'):
            await wait(f"sum(increase({series}[15s]))", lambda r: r and float(r[0]["value"][1]) > 0)
        await wait("sum(edge_routers_connected)", lambda r: r and r[0]["value"][1] == "4")

        # subscribers really got the traffic
        for c in subscribers:
            await collect(c, 5, {"chat_message"}, 10 * tu)

        # kill -9 an edge: its target goes down, the other stays up, its connections leave the sum
        edge2.kill()
        instance = f"{HOST}:{edge2.port}"
        await wait(f'up{{tier="edge",instance="{instance}"}}', lambda r: r and r[0]["value"][1] == "0")
        assert _one(prom.query(f'up{{tier="edge",instance="{HOST}:{edge1.port}"}}')) == 1
        await wait("sum(edge_connections_active)", lambda r: r and r[0]["value"][1] == "2")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(traffic, 30 * tu)
        await asyncio.to_thread(prom.close)


async def test_stats_answers_the_tripsage_names(cluster, clients, sid, tu) -> None:
    edge = cluster.by_role("edge")[0]
    url = f"http://{HOST}:{edge.port}/api/v1/stats"
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        before = (await http.get(url)).json()
        alice = clients(chat_url(cluster, 0, sid), token_for(cluster, "alice", [sid]), session_id=sid)
        bob = clients(chat_url(cluster, 0, sid), token_for(cluster, "bob", [sid]), session_id=sid)
        await alice.connect()
        await bob.connect()
        for i in range(5):
            await alice.chat(f"m{i}")
        await collect(bob, 5, {"chat_message"}, 10 * tu)
        # a socket that has not authenticated yet
        async with websockets.connect(f"ws://{HOST}:{edge.port}/api/ws/chat/{sid}"):
            async def counts() -> dict:  # type: ignore[type-arg]
                return (await http.get(url)).json()  # type: ignore[no-any-return]

            deadline = asyncio.get_running_loop().time() + 10 * tu
            stats = await counts()
            while stats["connections_by_status"]["authenticating"] < 1:
                assert asyncio.get_running_loop().time() < deadline, stats
                await asyncio.sleep(0.05)
                stats = await counts()
    assert stats["pid"] == edge.pid
    assert stats["active_connections"] == 2 and stats["peak_connections"] >= 2
    assert stats["connections_by_status"] == {"connected": 2, "authenticating": 1}
    assert stats["total_messages_received"] >= before["total_messages_received"] + 5
    assert stats["total_messages_sent"] >= before["total_messages_sent"] + 10  # 5 each
    assert stats["total_bytes_sent"] > before["total_bytes_sent"]
    assert stats["message_queue_size"] >= 0
    # the older names stay
    assert stats["messages_in"] == stats["total_messages_received"]
    assert stats["bytes_out"] == stats["total_bytes_sent"]
