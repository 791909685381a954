"""Delivery through the whole cluster: two edges, two routers, history, redis; public API only."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from switchboard_client import Event, PublishError

from services.devcluster import DevCluster
from tests.e2e.conftest import chat_url, collect, token_for


async def test_two_edges_get_every_message_once_in_order(cluster, clients, sid, tu) -> None:
    alice = clients(chat_url(cluster, 0, sid), token_for(cluster, "alice", [sid]), session_id=sid)
    bob = clients(chat_url(cluster, 1, sid), token_for(cluster, "bob", [sid]), session_id=sid)
    await alice.connect()
    await bob.connect()
    n = 1000
    for i in range(n):
        await alice.chat(f"message {i}")
    got = {}
    for name, c in (("alice", alice), ("bob", bob)):
        events = await collect(c, n, {"chat_message"}, 10 * tu)
        got[name] = events
        offsets = [e["offset"] for e in events]
        assert offsets == sorted(set(offsets)), f"{name}: offsets not strictly increasing"
        assert [e["payload"]["content"] for e in events] == [f"message {i}" for i in range(n)]
        assert len({e["epoch"] for e in events}) == 1
        assert all(e["channel"] == f"session:{sid}" and e["user_id"] == "alice" for e in events)
    assert [e["id"] for e in got["alice"]] == [e["id"] for e in got["bob"]]
    assert [e["offset"] for e in got["alice"]] == [e["offset"] for e in got["bob"]]
    await asyncio.sleep(0.3 * tu)  # nothing more may arrive: exactly once
    extra = [e for c in (alice, bob) for e in _drain(c) if e["type"] == "chat_message"]
    assert extra == []


async def _one_per_edge(cluster, clients, sid) -> list:
    """A connected member of the session on each edge (users u0 and u1)."""
    subs = []
    for edge in (0, 1):
        c = clients(chat_url(cluster, edge, sid), token_for(cluster, f"u{edge}", [sid]), session_id=sid)
        await c.connect()
        subs.append(c)
    return subs


def _drain(client) -> list[dict]:
    out = []
    while client.pending():
        out.append(client._events.get_nowait())
    return out


async def test_http_publish_reaches_every_edge_and_history_agrees(cluster, clients, publisher, sid, tu) -> None:
    subs = await _one_per_edge(cluster, clients, sid)
    ack = await publisher.publish(f"session:{sid}", "chat_message_chunk",
                                  {"content": "Hel", "message_id": "m1", "chunk_index": 0})
    assert ack["offset"] >= 1 and ack["epoch"]
    for c in subs:
        (ev,) = await collect(c, 1, {"chat_message_chunk"}, 5 * tu)
        assert ev["offset"] == ack["offset"] and ev["epoch"] == ack["epoch"]
        assert ev["id"] == ack["id"] and ev["payload"]["content"] == "Hel"
    # The HTTP history endpoint and the `history` frame return it with the same offset.
    edge_port = cluster.by_role("edge")[1].port
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        r = await http.get(f"http://127.0.0.1:{edge_port}/api/v1/channels/session:{sid}/history",
                           params={"since": 0, "limit": 10},
                           headers={"authorization": f"Bearer {token_for(cluster, 'u0', [sid])}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(e["id"], e["offset"]) for e in body["events"]] == [(ack["id"], ack["offset"])]
    assert body["epoch"] == ack["epoch"] and body["complete"] is True
    await subs[0].send("history", {"channel": f"session:{sid}", "limit": 10})
    (resp,) = await collect(subs[0], 1, {"history_response"}, 5 * tu)
    assert [(e["id"], e["offset"], e["epoch"]) for e in resp["payload"]["events"]] == [
        (ack["id"], ack["offset"], ack["epoch"])]


async def test_publish_api_refuses_bad_requests(cluster, tu) -> None:
    port = cluster.by_role("edge")[0].port
    url = f"http://127.0.0.1:{port}/api/v1/publish"
    good = {"channel": "session:x1", "type": "chat_message", "payload": {"content": "x"}}
    no_scope = token_for(cluster, "alice", ["x1"])
    with_scope = token_for(cluster, "svc", scopes=["publish"])
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        assert (await http.post(url, json=good)).status_code == 401
        r = await http.post(url, json=good, headers={"authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["code"] == "invalid_token"
        r = await http.post(url, json=good, headers={"authorization": f"Bearer {no_scope}"})
        assert r.status_code == 403
        auth = {"authorization": f"Bearer {with_scope}"}
        for bad in ({**good, "type": "nonsense"}, {**good, "channel": "other:1"},
                    {**good, "payload": [1]}, {**good, "priority": 7}):
            r = await http.post(url, json=bad, headers=auth)
            assert r.status_code == 400, bad
        r = await http.post(url, content=b"{not json", headers=auth)
        assert r.status_code == 400
        # the publish API keeps working after bad requests
        r = await http.post(url, json=good, headers=auth)
        assert r.status_code == 200 and r.json()["offset"] >= 1


async def test_same_id_is_stored_and_delivered_once(cluster, clients, publisher, sid, tu) -> None:
    c = clients(chat_url(cluster, 1, sid), token_for(cluster, "u", [sid]), session_id=sid)
    await c.connect()
    first = await publisher.publish(f"session:{sid}", "notification", {"n": 1}, event_id="evt-1")
    again = await publisher.publish(f"session:{sid}", "notification", {"n": 1}, event_id="evt-1")
    assert again["offset"] == first["offset"] and again["duplicate"] is True
    await publisher.publish(f"session:{sid}", "notification", {"n": 2}, event_id="evt-2")
    events = await collect(c, 2, {"notification"}, 5 * tu)
    assert [e["id"] for e in events] == ["evt-1", "evt-2"]


async def test_a_batch_publish_is_stored_in_order_all_or_none(cluster, clients, publisher, sid, tu) -> None:
    channel = f"session:{sid}"
    c = clients(chat_url(cluster, 1, sid), token_for(cluster, "u", [sid]), session_id=sid)
    await c.connect()
    events = [Event("chat_message_chunk", {"content": f"part {i}", "chunk_index": i}, f"{sid}-c{i}")
              for i in range(5)]
    stored = await publisher.publish_many(channel, events)
    offsets = [r["offset"] for r in stored["results"]]
    assert [r["id"] for r in stored["results"]] == [e.id for e in events]
    assert offsets == list(range(offsets[0], offsets[0] + 5)) and stored["epoch"]
    got = await collect(c, 5, {"chat_message_chunk"}, 5 * tu)
    assert [(e["id"], e["offset"]) for e in got] == list(zip([e.id for e in events], offsets, strict=True))
    again = await publisher.publish_many(channel, events)  # a retry: stored once
    assert [(r["offset"], r["duplicate"]) for r in again["results"]] == [(o, True) for o in offsets]

    port = cluster.by_role("edge")[0].port
    auth = {"authorization": f"Bearer {token_for(cluster, 'svc', scopes=['publish'])}"}
    good = {"type": "chat_message_chunk", "payload": {"content": "x"}}
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        for bad in ([good, {**good, "type": "nonsense"}], [good] * 33, [good, {"type": "chat_typing_start"}],
                    [], "not a list", [good, [1]]):
            r = await http.post(f"http://127.0.0.1:{port}/api/v1/publish", headers=auth,
                                json={"channel": channel, "events": bad})
            assert r.status_code == 400 and r.json()["code"] == "invalid", bad
        r = await http.get(f"http://127.0.0.1:{port}/api/v1/channels/{channel}/history",
                           params={"since": 0, "limit": 100}, headers=auth)
    assert [e["offset"] for e in r.json()["events"]] == offsets  # nothing of a refused batch


async def test_a_stream_publisher_batches_and_keeps_the_order(cluster, clients, publisher, sid, tu) -> None:
    subs = await _one_per_edge(cluster, clients, sid)
    n = 300
    async with publisher.stream(f"session:{sid}") as stream:
        for i in range(n):  # queued without waiting: requests carry up to 32 chunks each
            await stream.send("chat_message_chunk", {"content": f"t{i}", "chunk_index": i})
    assert stream.stored == n and stream.requests <= -(-n // 32)
    for c in subs:
        got = await collect(c, n, {"chat_message_chunk"}, 10 * tu)
        assert [e["payload"]["chunk_index"] for e in got] == list(range(n))
        offsets = [e["offset"] for e in got]
        assert offsets == list(range(offsets[0], offsets[0] + n))


async def test_ephemeral_typing_skips_history(cluster, clients, sid, tu) -> None:
    a = clients(chat_url(cluster, 0, sid), token_for(cluster, "a", [sid]), session_id=sid)
    b = clients(chat_url(cluster, 1, sid), token_for(cluster, "b", [sid]), session_id=sid)
    await a.connect()
    await b.connect()
    await a.send("chat_typing_start", {})
    (ev,) = await collect(b, 1, {"chat_typing_start"}, 5 * tu)
    assert "offset" not in ev and ev["payload"] == {"user_id": "a", "is_typing": True}
    await a.send("history", {"channel": f"session:{sid}", "limit": 10})
    (resp,) = await collect(a, 1, {"history_response"}, 5 * tu)
    assert resp["payload"]["events"] == []


async def test_health_and_readiness(cluster: DevCluster, tu) -> None:
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        for edge in cluster.by_role("edge"):
            base = f"http://127.0.0.1:{edge.port}"
            assert (await http.get(base + "/healthz")).json() == {"status": "ok"}
            ready = await http.get(base + "/readyz")
            assert ready.status_code == 200 and ready.json()["router"] and ready.json()["history"]
            metrics = (await http.get(base + "/metrics")).text
            assert "edge_connections_total" in metrics
            stats = (await http.get(base + "/api/v1/stats")).json()
            assert {"active_connections", "peak_connections", "messages_in", "bytes_out"} <= stats.keys()


async def test_raw_socket_sees_no_null_values(cluster, sid, tu) -> None:
    url = chat_url(cluster, 0, sid)
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "n", [sid])}))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)) for _ in range(2)]
        for f in frames:
            assert "null" not in json.dumps(f)


async def test_a_stream_publisher_stops_at_a_refused_request_and_keeps_what_was_not_stored(
        cluster, publisher) -> None:
    stream = publisher.stream("nowhere:1")  # not a channel: the edge answers 400
    ids = [await stream.send("chat_message_chunk", {"content": str(i)}) for i in range(3)]
    with pytest.raises(PublishError) as info:
        await stream.flush()
    assert info.value.status == 400 and [e.id for e in stream.unsent] == ids
    with pytest.raises(PublishError):
        await stream.send("chat_message_chunk", {"content": "late"})
    with pytest.raises(PublishError):
        await stream.aclose()
