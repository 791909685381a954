"""A flooding client is told, then closed with 4029; others on the edge are unaffected."""

from __future__ import annotations

import asyncio
import json

import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import chat_url, collect, token_for


async def test_flood_gets_an_error_then_4029(make_cluster, clients, sid, tu) -> None:
    cluster = make_cluster(edges=1, routers=1, env={"SWITCHBOARD_CLIENT_RATE_PER_S": "20",
                                                    "SWITCHBOARD_CLIENT_BURST": "50"})
    calm = clients(chat_url(cluster, 0, sid), token_for(cluster, "calm", [sid]), session_id=sid)
    await calm.connect()
    async with websockets.connect(chat_url(cluster, 0, sid)) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "flood", [sid])}))
        assert json.loads(await ws.recv())["success"] is True
        frames, code = [], None
        try:
            for _ in range(1000):  # bounded: 1,000 heartbeats as fast as the socket takes them
                await ws.send(json.dumps({"type": "heartbeat", "payload": {}}))
            async with asyncio.timeout(10 * tu):
                async for raw in ws:
                    frames.append(json.loads(raw))
        except ConnectionClosed:
            pass
        code = ws.close_code
    assert code == 4029
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["payload"]["code"] for e in errors] == ["rate_limited"]  # told once, not 950 times
    beats = [f for f in frames if f["type"] == "connection_heartbeat"]
    assert 50 <= len(beats) < 1000
    # the calm client on the same edge is unaffected
    await calm.chat("still fine")
    (ev,) = await collect(calm, 1, {"chat_message"}, 5 * tu)
    assert ev["payload"]["content"] == "still fine"


async def test_batch_items_count_against_the_limit(make_cluster, sid, tu) -> None:
    cluster = make_cluster(edges=1, routers=1, env={"SWITCHBOARD_CLIENT_RATE_PER_S": "1",
                                                    "SWITCHBOARD_CLIENT_BURST": "10"})
    async with websockets.connect(chat_url(cluster, 0, sid)) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "b", [sid])}))
        assert json.loads(await ws.recv())["success"] is True
        await ws.send(json.dumps({"type": "batch", "payload": {"messages": [
            {"type": "heartbeat", "payload": {}} for _ in range(20)]}}))
        got = []
        async with asyncio.timeout(5 * tu):
            while not any(f["type"] == "error" for f in got):
                got.append(json.loads(await ws.recv()))
    assert [f["payload"]["code"] for f in got if f["type"] == "error"] == ["rate_limited"]
    assert sum(1 for f in got if f["type"] == "connection_heartbeat") <= 9  # 10 tokens: the batch took one
