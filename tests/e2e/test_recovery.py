"""Recovery: a client that reconnects, to any edge, with `{offset, epoch}` per channel gets what it
missed, in order, then live events with no gap and no duplicate at the seam; or it is told
`recovered: false` when history no longer covers the range."""

from __future__ import annotations

import asyncio
import json

import websockets
from switchboard_client import Publisher

from tests.e2e.conftest import chat_url, collect, token_for


async def _publish_stream(publisher, channel: str, start: int, count: int, interval_s: float) -> None:
    for i in range(start, start + count):
        await publisher.publish(channel, "chat_message", {"content": f"m{i}", "seq": i}, event_id=f"{channel}-{i}")
        await asyncio.sleep(interval_s)


async def test_reconnect_to_another_edge_recovers_across_live_traffic(cluster, clients, publisher, sid, tu) -> None:
    channel = f"session:{sid}"
    first = clients(chat_url(cluster, 0, sid), token_for(cluster, "r", [sid]), session_id=sid)
    await first.connect()
    await _publish_stream(publisher, channel, 0, 20, 0)
    got = await collect(first, 20, {"chat_message"}, 10 * tu)
    position = {channel: {"offset": got[-1]["offset"], "epoch": got[-1]["epoch"]}}
    await first.close()

    # Publishing goes on while the client is away and while it recovers.
    stream = asyncio.create_task(_publish_stream(publisher, channel, 20, 300, 0.002))
    await asyncio.sleep(0.2 * tu)
    async with websockets.connect(chat_url(cluster, 1, sid), max_size=None) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "r", [sid]), "session_id": sid,
                                  "recover": position}))
        auth = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        assert auth["success"] is True
        assert auth["recovered"][channel]["recovered"] is True
        assert auth["recovered"][channel]["epoch"] == got[-1]["epoch"]
        await stream
        seqs, offsets = [], []
        while len(seqs) < 300:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10 * tu))
            if frame["type"] == "chat_message":
                seqs.append(frame["payload"]["seq"])
                offsets.append(frame["offset"])
    assert seqs == list(range(20, 320))  # nothing missed, nothing twice, in order
    assert offsets == list(range(offsets[0], offsets[0] + 300)) and offsets[0] == got[-1]["offset"] + 1


async def test_recover_frame_on_an_open_connection(cluster, clients, publisher, sid, tu) -> None:
    channel = f"session:{sid}"
    await _publish_stream(publisher, channel, 0, 5, 0)
    # A client on another session's connection asks for this channel's events after offset 2.
    other = "o" + sid
    c = clients(chat_url(cluster, 1, other), token_for(cluster, "r2", [sid, other]), session_id=other)
    await c.connect()
    await c.send("history", {"channel": channel, "limit": 5})
    (history,) = await collect(c, 1, {"history_response"}, 5 * tu)
    epoch = history["payload"]["epoch"]
    await c.send("recover", {"channels": {channel: {"offset": 2, "epoch": epoch}}})
    (resp,) = await collect(c, 1, {"recover_response"}, 5 * tu)
    assert resp["payload"]["channels"][channel] == {"recovered": True, "epoch": epoch, "offset": 5}
    missed = await collect(c, 3, {"chat_message"}, 5 * tu)
    assert [e["offset"] for e in missed] == [3, 4, 5]
    # ...and the channel is now live on this connection
    await publisher.publish(channel, "chat_message", {"content": "live", "seq": 5})
    (live,) = await collect(c, 1, {"chat_message"}, 5 * tu)
    assert live["offset"] == 6


async def test_unknown_epoch_and_forbidden_channels_are_not_recovered(cluster, clients, publisher, sid, tu) -> None:
    channel = f"session:{sid}"
    await publisher.publish(channel, "chat_message", {"content": "x"})
    c = clients(chat_url(cluster, 0, sid), token_for(cluster, "r3", [sid]), session_id=sid)
    await c.connect()
    await c.send("recover", {"channels": {channel: {"offset": 1, "epoch": "not-the-epoch"},
                                          "session:someone-else": {"offset": 0, "epoch": ""}}})
    (resp,) = await collect(c, 1, {"recover_response"}, 5 * tu)
    assert resp["payload"]["channels"][channel]["recovered"] is False
    assert resp["payload"]["channels"][channel]["reason"] == "epoch_changed"
    assert resp["payload"]["channels"]["session:someone-else"] == {"recovered": False, "reason": "forbidden"}


async def test_trimmed_history_says_recovered_false(make_cluster, clients, sid, tu) -> None:
    cluster = make_cluster(edges=1, routers=1, env={"SWITCHBOARD_HISTORY_MAX_LEN": "10"})
    port = cluster.by_role("edge")[0].port
    async with Publisher(f"http://127.0.0.1:{port}", token_for(cluster, "svc", scopes=["publish"])) as pub:
        acks = [await pub.publish(f"session:{sid}", "notification", {"n": i}) for i in range(30)]
    c = clients(chat_url(cluster, 0, sid), token_for(cluster, "late", [sid]), session_id=sid,
                channels=[f"session:{sid}"])
    c.positions = {f"session:{sid}": {"offset": acks[5]["offset"], "epoch": acks[5]["epoch"]}}
    reply = await c.connect()
    assert reply["recovered"][f"session:{sid}"] == {
        "recovered": False, "epoch": acks[0]["epoch"], "offset": 30, "reason": "trimmed"}
    assert c.unrecovered == {f"session:{sid}"}


async def test_client_message_ids_make_retries_idempotent(cluster, clients, sid, tu) -> None:
    a = clients(chat_url(cluster, 0, sid), token_for(cluster, "a", [sid]), session_id=sid)
    b = clients(chat_url(cluster, 1, sid), token_for(cluster, "b", [sid]), session_id=sid)
    await a.connect()
    await b.connect()
    for _ in range(3):  # a client retrying the same message (same id) after a timeout
        await a.chat("only once", message_id="client-msg-1")
    await a.chat("next", message_id="client-msg-2")
    got = await collect(b, 2, {"chat_message"}, 5 * tu)
    assert [e["id"] for e in got] == ["client-msg-1", "client-msg-2"]
    await asyncio.sleep(0.3 * tu)
    assert [e for e in [b._events.get_nowait() for _ in range(b.pending())] if e["type"] == "chat_message"] == []
