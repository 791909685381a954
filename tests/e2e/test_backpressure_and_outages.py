"""A slow reader never slows others; outages fail publishes clearly and heal by themselves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import websockets

from tests.e2e.conftest import chat_url, collect, token_for
from tests.support.rawws import RawWebSocket

N = 10_000
BATCH = 40  # 40 messages of 1 kB: under the 64 KiB frame limit


async def test_slow_reader_is_closed_4008_and_others_get_everything(cluster, clients, sid, tu) -> None:
    edge0 = cluster.by_role("edge")[0]
    fast = clients(chat_url(cluster, 1, sid), token_for(cluster, "fast", [sid]), session_id=sid)
    sender = clients(chat_url(cluster, 1, sid), token_for(cluster, "sender", [sid]), session_id=sid)
    await fast.connect()
    await sender.connect()
    slow = RawWebSocket(edge0.port, f"/api/ws/chat/{sid}", timeout_s=60 * tu)
    try:  # closed however the test ends: a failure must not leave it to the collector
        slow.send_json({"token": token_for(cluster, "slow", [sid])})
        assert json.loads(slow.recv_frame()[1])["success"] is True
        # ...and from now on `slow` reads nothing while 10,000 messages of 1 kB flow to its session.
        pad = "x" * 1000
        for start in range(0, N, BATCH):
            await sender.send("batch", {"messages": [
                {"type": "chat_message", "payload": {"content": f"{i} {pad}"}} for i in range(start, start + BATCH)]})
        # Once its queue overflowed, the slow reader resumes: it must find the 4008 close after
        # what it was sent.
        await _wait_metric(edge0.port, "edge_send_queue_overflows_total 1.0", 60 * tu)
        reading = asyncio.create_task(asyncio.to_thread(slow.read_until_close))
        got = await collect(fast, N, {"chat_message"}, 60 * tu)
        assert [int(e["payload"]["content"].split()[0]) for e in got] == list(range(N))
        offsets = [e["offset"] for e in got]
        assert offsets == sorted(set(offsets))

        frames = await reading
    finally:
        slow.close()
    assert slow.close_code == 4008
    seen = [f for f in frames if f.get("type") == "chat_message"]
    assert 0 < len(seen) < N  # it was cut off, not fed everything
    assert [e["offset"] for e in seen] == offsets[: len(seen)]  # what it did get was in order

    # It reconnects with its position and recovers the rest, in order, exactly once.
    position = {f"session:{sid}": {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}}
    async with websockets.connect(chat_url(cluster, 1, sid), max_size=None) as again:
        await again.send(json.dumps({"token": token_for(cluster, "slow", [sid]), "recover": position}))
        auth = json.loads(await again.recv())
        assert auth["recovered"][f"session:{sid}"]["recovered"] is True
        rest = []
        while len(seen) + len(rest) < N:
            frame = json.loads(await asyncio.wait_for(again.recv(), 10 * tu))
            if frame.get("type") == "chat_message":
                rest.append(frame)
    assert [e["offset"] for e in seen + rest] == offsets

    await _wait_metric(edge0.port, 'edge_closes_total{code="4008"} 1.0', 5 * tu)


async def _wait_metric(port: int, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while line not in (await http.get(f"http://127.0.0.1:{port}/metrics")).text:
            assert time.monotonic() < deadline, f"metric never showed {line}"
            await asyncio.sleep(0.1)


async def _ready(port: int) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"http://127.0.0.1:{port}/readyz")
        return r.status_code, r.json()


async def _wait_readiness(port: int, until: Callable[[int, dict], bool], timeout_s: float) -> dict:
    """The readiness body once `until(status, body)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await _ready(port)
        if until(status, body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


async def _wait_history(port: int, up: bool, timeout_s: float) -> dict:
    """The readiness body once it reports history as `up`."""
    return await _wait_readiness(port, lambda _, body: body["history"] is up, timeout_s)


async def _wait_ready(port: int, want: int, timeout_s: float) -> dict:
    return await _wait_readiness(port, lambda status, _: status == want, timeout_s)


async def test_history_outage_fails_publishes_clearly_then_heals(make_cluster, clients, sid, tu) -> None:
    # append_via=history: publishes need a history node, so its outage fails them (retryably).
    cluster = make_cluster(edges=2, routers=2, env={"SWITCHBOARD_PUBLISH_TIMEOUT_S": "1.5",
                                                    "SWITCHBOARD_APPEND_VIA": "history"})
    port = cluster.by_role("edge")[0].port
    user = clients(chat_url(cluster, 0, sid), token_for(cluster, "u", [sid]), session_id=sid)
    await user.connect()
    history = cluster.by_role("history")[0]
    history.kill()

    body = await _wait_ready(port, 503, 15 * tu)
    assert body["history"] is False
    await user.chat("lost in the outage?", message_id="during-outage")
    (err,) = await collect(user, 1, {"connection_error"}, 15 * tu)
    assert err["payload"]["code"] == "unavailable" and err["payload"]["message_id"] == "during-outage"
    assert err["payload"]["retryable"] is True
    publish_token = token_for(cluster, "svc", scopes=["publish"])
    async with httpx.AsyncClient(timeout=10 * tu) as http:
        r = await http.post(f"http://127.0.0.1:{port}/api/v1/publish",
                            json={"channel": f"session:{sid}", "type": "notification", "payload": {}},
                            headers={"authorization": f"Bearer {publish_token}"})
    assert r.status_code == 503 and r.json()["code"] == "unavailable"

    cluster.restart(history)
    await _wait_ready(port, 200, 15 * tu)
    # The edge sees history first; a router may still be reconnecting to it for a moment, so the
    # first try may get a retryable error: resend with the same id, as clients do.
    deadline = time.monotonic() + 15 * tu
    while True:
        await user.chat("after the outage", message_id="after-outage")
        (ev,) = await collect(user, 1, {"chat_message", "connection_error"}, 10 * tu)
        if ev["type"] == "chat_message":
            break
        assert ev["payload"]["retryable"] is True and time.monotonic() < deadline, ev
    assert ev["payload"]["content"] == "after the outage"


async def test_history_outage_keeps_live_traffic_durable_and_fails_recovery_clearly(
        make_cluster, clients, sid, tu) -> None:
    # append_via=store (the default): routers append to the store themselves, so with every
    # history node gone publishes are still stored and delivered; only reads wait for history.
    cluster = make_cluster(edges=2, routers=2)
    port = cluster.by_role("edge")[0].port
    channel = f"session:{sid}"
    sender = clients(chat_url(cluster, 0, sid), token_for(cluster, "s", [sid]), session_id=sid)
    reader = clients(chat_url(cluster, 1, sid), token_for(cluster, "r", [sid]), session_id=sid)
    await sender.connect()
    await reader.connect()
    await sender.chat("before the outage")
    (before,) = await collect(reader, 1, {"chat_message"}, 10 * tu)
    history = cluster.by_role("history")[0]
    history.kill()

    # history is reported, not required: the edge stays ready
    body = await _wait_history(port, False, 15 * tu)
    assert body["ready"] is True and body["router"] is True and body["store"] is True
    for i in range(3):
        await sender.chat(f"during the outage {i}")
    during = await collect(reader, 3, {"chat_message"}, 10 * tu)
    assert [e["payload"]["content"] for e in during] == [f"during the outage {i}" for i in range(3)]
    assert [e["offset"] for e in during] == [before["offset"] + 1 + i for i in range(3)]
    publish_token = token_for(cluster, "svc", scopes=["publish"])
    async with httpx.AsyncClient(timeout=10 * tu) as http:
        r = await http.post(f"http://127.0.0.1:{port}/api/v1/publish",
                            json={"channel": channel, "type": "notification", "payload": {"n": 1}},
                            headers={"authorization": f"Bearer {publish_token}"})
        assert r.status_code == 200, r.text
        assert r.json()["offset"] == before["offset"] + 4
        r = await http.get(f"http://127.0.0.1:{port}/api/v1/channels/{channel}/history",
                           headers={"authorization": f"Bearer {publish_token}"})
        assert r.status_code == 503 and r.json()["code"] == "unavailable"

    # a client recovering now is told why, retryably, and still gets live traffic
    position = {channel: {"offset": before["offset"], "epoch": before["epoch"]}}
    async with websockets.connect(chat_url(cluster, 1, sid)) as late:
        await late.send(json.dumps({"token": token_for(cluster, "late", [sid]), "recover": position}))
        auth = json.loads(await asyncio.wait_for(late.recv(), 10 * tu))
    answer = auth["recovered"][channel]
    assert answer["recovered"] is False and answer["reason"] == "unavailable"

    # once history is back, what was published during the outage is there to recover, in order
    cluster.restart(history)
    await _wait_history(cluster.by_role("edge")[1].port, True, 15 * tu)
    async with websockets.connect(chat_url(cluster, 1, sid)) as late:
        await late.send(json.dumps({"token": token_for(cluster, "late", [sid]), "recover": position}))
        auth = json.loads(await asyncio.wait_for(late.recv(), 10 * tu))
        assert auth["recovered"][channel]["recovered"] is True
        missed = []
        while len(missed) < 4:
            frame = json.loads(await asyncio.wait_for(late.recv(), 10 * tu))
            if frame.get("channel") == channel and frame.get("offset"):
                missed.append(frame)
    assert [f["offset"] for f in missed] == [before["offset"] + 1 + i for i in range(4)]
    assert [f["type"] for f in missed] == ["chat_message"] * 3 + ["notification"]


async def test_store_outage_shows_in_readiness_and_heals(make_cluster, clients, sid, tu) -> None:
    cluster = make_cluster(edges=1, routers=1, env={"SWITCHBOARD_PUBLISH_TIMEOUT_S": "1.5"})
    port = cluster.by_role("edge")[0].port
    user = clients(chat_url(cluster, 0, sid), token_for(cluster, "u", [sid]), session_id=sid)
    await user.connect()
    cluster.stop_store(save=True)
    body = await _wait_ready(port, 503, 15 * tu)
    assert body["store"] is False or body["history"] is False
    await user.chat("during the store outage", message_id="store-down")
    (err,) = await collect(user, 1, {"connection_error"}, 15 * tu)
    assert err["payload"]["message_id"] == "store-down"
    cluster.start_store_again()
    await _wait_ready(port, 200, 20 * tu)
    await user.chat("store is back")
    (ev,) = await collect(user, 1, {"chat_message"}, 10 * tu)
    assert ev["payload"]["content"] == "store is back"
