"""Presence: who is in a session channel, across edges, with join/leave events, queries by frame
and by HTTP, and leases that make the users of a killed edge disappear."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from switchboard_client import PresenceError, SwitchboardClient

from services.devcluster import DevCluster
from tests.e2e.conftest import chat_url, token_for

PRESENCE = {"presence_join", "presence_leave"}


async def next_presence(c: SwitchboardClient, timeout_s: float) -> dict[str, Any]:
    while True:
        ev = await c.next_event(timeout_s)
        if ev["type"] in PRESENCE:
            return ev


async def connect(clients: Any, cluster: DevCluster, edge: int, user: str, sid: str, **kw: Any) -> SwitchboardClient:
    c: SwitchboardClient = clients(chat_url(cluster, edge, sid), token_for(cluster, user, [sid]), session_id=sid, **kw)
    await c.connect()
    return c


async def eventually_present(c: SwitchboardClient, channel: str, want: dict[str, int], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if users_of(await c.presence(channel, timeout_s)) == want:
                return
            await asyncio.sleep(0.05)


def users_of(answer: dict[str, Any]) -> dict[str, int]:
    return {u["user_id"]: u["connections"] for u in answer["users"]}


async def http_presence(cluster: DevCluster, channel: str, token: str | None) -> httpx.Response:
    edge = cluster.by_role("edge")[1]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge.port}", timeout=10) as http:
        return await http.get(f"/api/v1/channels/{channel}/presence", headers=headers)


async def test_joins_queries_and_leaves_across_edges(cluster, clients, sid, tu) -> None:
    channel = f"session:{sid}"
    alice = await connect(clients, cluster, 0, "alice", sid)
    own = await next_presence(alice, 5 * tu)
    assert own["type"] == "presence_join" and own["channel"] == channel and own["session_id"] == sid
    assert own["payload"] == {"user_id": "alice", "count": 1} and "offset" not in own

    bob = await connect(clients, cluster, 1, "bob", sid)
    assert (await next_presence(alice, 5 * tu))["payload"] == {"user_id": "bob", "count": 2}
    assert (await next_presence(bob, 5 * tu))["payload"] == {"user_id": "bob", "count": 2}

    # A second connection of alice (on the other edge) is no join; the counts show it.
    await connect(clients, cluster, 1, "alice", sid)
    await eventually_present(alice, channel, {"alice": 2, "bob": 1}, 5 * tu)
    answer = await alice.presence(channel, 5 * tu)
    assert answer == {"channel": channel, "count": 2, "users": [
        {"user_id": "alice", "connections": 2}, {"user_id": "bob", "connections": 1}]}
    assert alice.present[channel] == {"alice", "bob"}

    r = await http_presence(cluster, channel, token_for(cluster, "bob", [sid]))
    assert r.status_code == 200 and r.json() == answer
    publisher_token = token_for(cluster, "backend", scopes=["publish"])
    assert (await http_presence(cluster, channel, publisher_token)).json() == answer
    assert (await http_presence(cluster, channel, token_for(cluster, "eve", ["elsewhere"]))).status_code == 403
    assert (await http_presence(cluster, channel, None)).status_code == 401

    with pytest.raises(PresenceError) as refused:
        await alice.presence("session:not-hers", 5 * tu)
    assert refused.value.code == "forbidden"

    await bob.close()
    leave = await next_presence(alice, 5 * tu)
    assert leave["type"] == "presence_leave" and leave["payload"] == {"user_id": "bob", "count": 1}
    assert users_of(await alice.presence(channel, 5 * tu)) == {"alice": 2}


async def test_a_killed_edge_users_leave_within_the_ttl_announced_once(make_cluster, clients, sid, tu) -> None:
    ttl = 2.0
    cluster = make_cluster(edges=3, env={"SWITCHBOARD_PRESENCE_TTL_S": str(ttl)})
    channel = f"session:{sid}"
    alice = await connect(clients, cluster, 0, "alice", sid)
    carol = await connect(clients, cluster, 2, "carol", sid)
    await connect(clients, cluster, 1, "bob", sid, reconnect=False)
    # Each edge writes its presence changes at most once per PRESENCE_FLUSH_S, so joins announced
    # by different edges arrive in either order, and a watcher may also see its own join or that
    # of a user who came just before it: wait for the joins each watcher is due, then let the
    # stragglers arrive and drop them (none is a leave: nobody left yet).
    for watcher, due in ((alice, {"carol", "bob"}), (carol, {"bob"})):
        while due:
            due.discard((await next_presence(watcher, 5 * tu))["payload"].get("user_id"))
    await asyncio.sleep(0.5 * tu)
    for watcher in (alice, carol):
        while watcher.pending():
            assert (await watcher.next_event(tu))["type"] != "presence_leave"

    victim = cluster.by_role("edge")[1]
    victim.kill()
    # Both surviving edges renew and sweep the channel; exactly one of them announces bob.
    for watcher in (alice, carol):
        leave = await next_presence(watcher, ttl + 3 * tu)
        assert leave["type"] == "presence_leave" and leave["payload"] == {"user_id": "bob", "count": 2}
    assert users_of(await alice.presence(channel, 5 * tu)) == {"alice": 1, "carol": 1}
    await asyncio.sleep(ttl)  # several more renewals on both edges: no second announcement
    for watcher in (alice, carol):
        while watcher.pending():
            assert (await watcher.next_event(tu))["type"] not in PRESENCE


async def test_events_can_be_turned_off_while_queries_work(make_cluster, clients, sid, tu) -> None:
    cluster = make_cluster(env={"SWITCHBOARD_PRESENCE_EVENTS": "false"})
    channel = f"session:{sid}"
    alice = await connect(clients, cluster, 0, "alice", sid)
    bob = await connect(clients, cluster, 1, "bob", sid)
    # Another edge's change is written within a store round trip of it: poll, bounded.
    await eventually_present(alice, channel, {"alice": 1, "bob": 1}, 5 * tu)
    await bob.close()
    await eventually_present(alice, channel, {"alice": 1}, 5 * tu)
    # A chat message published after all of it arrives with no presence event before it.
    await alice.chat("after the joins and leaves")
    await asyncio.sleep(0.5 * tu)
    seen = []
    while True:
        ev = await alice.next_event(5 * tu)
        seen.append(ev["type"])
        if ev["type"] == "chat_message":
            break
    assert not PRESENCE & set(seen)


async def test_big_sessions_get_throttled_summaries(make_cluster, clients, sid, tu) -> None:
    cluster = make_cluster(env={"SWITCHBOARD_PRESENCE_EVENT_MAX_USERS": "3",
                                "SWITCHBOARD_PRESENCE_THROTTLE_S": "1.0"})
    channel = f"session:{sid}"
    alice = await connect(clients, cluster, 0, "alice", sid)
    small = [await connect(clients, cluster, i % 2, f"u{i}", sid) for i in range(2)]
    crowd_names = [f"c{i}" for i in range(8)]
    crowd = await asyncio.gather(*(connect(clients, cluster, i % 2, name, sid)
                                   for i, name in enumerate(crowd_names)))

    joined: set[str] = set()
    summaries = []
    while joined != {"alice", "u0", "u1", *crowd_names}:
        ev = await next_presence(alice, 5 * tu)
        assert ev["type"] == "presence_join"
        if "users" in ev["payload"]:
            summaries.append(ev)
            joined.update(ev["payload"]["users"])
            assert "user_id" not in ev["payload"] and ev["payload"]["count"] > 3
        else:
            joined.add(ev["payload"]["user_id"])
    assert summaries and len(summaries) < len(crowd_names)  # coalesced
    assert max(s["payload"]["count"] for s in summaries) == 11

    await asyncio.gather(*(c.close() for c in crowd))
    left: set[str] = set()
    leave_summaries = 0
    while left != set(crowd_names):
        ev = await next_presence(alice, 5 * tu)
        assert ev["type"] == "presence_leave"
        if "users" in ev["payload"]:
            leave_summaries += 1
            left.update(ev["payload"]["users"])
        else:  # a leave seen once the session is small again (3 users) is announced on its own
            assert ev["payload"]["count"] <= 3
            left.add(ev["payload"]["user_id"])
    assert leave_summaries >= 1
    assert users_of(await alice.presence(channel, 5 * tu)) == {"alice": 1, "u0": 1, "u1": 1}
    del small
