"""The Python client's rules, against a real cluster: recover every channel after a reconnect,
drop duplicates by offset, queue sends while disconnected and flush them in order with an id
each, so that a message retried after an edge dies is stored once."""

from __future__ import annotations

from typing import Any

import httpx
from switchboard_client import Publisher, SwitchboardClient

from services.devcluster import DevCluster
from tests.e2e.conftest import collect, token_for


def urls(cluster: DevCluster, sid: str) -> list[str]:
    return [f"{u}/api/ws/chat/{sid}" for u in cluster.edge_urls()]


async def history_contents(cluster: DevCluster, channel: str) -> list[str]:
    edge = cluster.by_role("edge")[0]
    token = token_for(cluster, "reader", scopes=["publish"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}", timeout=10) as http:
        r = await http.get(f"/api/v1/channels/{channel}/history", params={"since": 0, "limit": 100},
                           headers={"authorization": f"Bearer {token}"})
    return [e["payload"]["content"] for e in r.json()["events"] if e["type"] == "chat_message"]


async def test_recovers_after_its_edge_is_killed(make_cluster: Any, clients: Any, sid: str, tu: float) -> None:
    cluster = make_cluster()
    channel = f"session:{sid}"
    c: SwitchboardClient = clients(urls(cluster, sid), token_for(cluster, "reader", [sid]), session_id=sid,
                                   backoff_max_s=0.5)
    await c.connect()
    survivor = cluster.by_role("edge")[1]
    async with Publisher(f"http://127.0.0.1:{survivor.port}", token_for(cluster, "b", scopes=["publish"])) as pub:
        for i in range(10):
            await pub.publish(channel, "chat_message", {"content": f"m{i}"})
        await collect(c, 10, {"chat_message"}, 10 * tu)
        cluster.by_role("edge")[0].kill()
        for i in range(10, 20):  # while the client is away
            await pub.publish(channel, "chat_message", {"content": f"m{i}"})
        rest = await collect(c, 10, {"chat_message"}, 20 * tu)
    assert [e["payload"]["content"] for e in rest] == [f"m{i}" for i in range(10, 20)]
    assert [e["offset"] for e in rest] == list(range(11, 21))
    assert c.connects == 2 and c.unrecovered == set()
    assert c.auth_replies[-1]["recovered"][channel]["recovered"] is True
    assert c.positions[channel]["offset"] == 20


async def test_sends_queued_or_cut_off_by_a_dead_edge_are_stored_once_in_order(
        make_cluster: Any, clients: Any, sid: str, tu: float) -> None:
    cluster = make_cluster()
    channel = f"session:{sid}"
    c: SwitchboardClient = clients(urls(cluster, sid), token_for(cluster, "writer", [sid]), session_id=sid,
                                   backoff_base_s=0.2, backoff_max_s=0.5)
    await c.connect()
    for i in range(5):
        await c.chat(f"m{i}")  # written to the socket; the edge dies before some are stored
    cluster.by_role("edge")[0].kill()
    for i in range(5, 10):
        await c.chat(f"m{i}")  # queued while there is no connection (or written to a dead one)
    echoed = await collect(c, 10, {"chat_message"}, 20 * tu)
    contents = [e["payload"]["content"] for e in echoed]
    assert sorted(set(contents)) == sorted(f"m{i}" for i in range(10))
    assert await history_contents(cluster, channel) == [f"m{i}" for i in range(10)]
    assert c.queued() == 0 and c.connects == 2
