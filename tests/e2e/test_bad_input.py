"""Bad input gets the documented reply or close code, and the other connections keep working."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import chat_url, collect, token_for


async def _closed_with(ws, tu) -> tuple[int, list[dict]]:
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10 * tu)))
    except ConnectionClosed as e:
        return (e.rcvd.code if e.rcvd else 1006), frames


@pytest.fixture
async def bystander(cluster, clients, sid):
    """A healthy connection on the same edge as the bad input; must keep working."""
    c = clients(chat_url(cluster, 0, sid), token_for(cluster, "bystander", [sid]), session_id=sid)
    await c.connect()
    return c


async def _still_works(bystander, tu) -> None:
    await bystander.chat("still here")
    (ev,) = await collect(bystander, 1, {"chat_message"}, 5 * tu)
    assert ev["payload"]["content"] == "still here"


def _expired(cluster, sid) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "late", "sessions": [sid], "iat": now - 100, "exp": now - 60},
                      cluster.jwt_secret, algorithm="HS256")


@pytest.mark.parametrize("case, close_code, error_code", [
    ("garbage token", 4001, "invalid_token"),
    ("expired token", 4001, "token_expired"),
    ("wrong signature", 4001, "invalid_signature"),
    ("forbidden session", 4003, "forbidden"),
    ("malformed auth frame", 4000, "malformed_json"),
    ("not an auth frame", 4000, "auth_required"),
    ("missing auth frame", 4000, "auth_timeout"),
])
async def test_auth_failures(cluster, bystander, sid, tu, case, close_code, error_code) -> None:
    frames = {
        "garbage token": json.dumps({"token": "not-a-jwt"}),
        "expired token": json.dumps({"token": _expired(cluster, sid)}),
        "wrong signature": json.dumps({"token": jwt.encode({"sub": "x", "sessions": [sid]},
                                                           "wrong-secret-of-32-bytes-or-more!!")}),
        "forbidden session": json.dumps({"token": token_for(cluster, "outsider", ["elsewhere"])}),
        "malformed auth frame": "{token:",
        "not an auth frame": json.dumps({"type": "chat_message", "payload": {"content": "hi"}}),
        "missing auth frame": None,
    }
    async with websockets.connect(chat_url(cluster, 0, sid)) as ws:
        if frames[case] is not None:
            await ws.send(frames[case])
        code, replies = await _closed_with(ws, tu)
    assert code == close_code
    assert len(replies) == 1 and replies[0]["success"] is False
    assert replies[0]["code"] == error_code and replies[0]["error"]
    assert isinstance(replies[0]["connection_id"], str)
    await _still_works(bystander, tu)


async def test_agent_status_of_another_user_is_forbidden(cluster, tu) -> None:
    port = cluster.by_role("edge")[0].port
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/agent-status/victim") as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "mallory")}))
        code, replies = await _closed_with(ws, tu)
    assert code == 4003 and replies[0]["success"] is False


@pytest.mark.parametrize("frame, code", [
    ("{not json", "malformed_json"),
    ("[1, 2, 3]", "invalid_message"),
    (json.dumps({"type": "launch_rockets", "payload": {}}), "unknown_type"),
    (json.dumps({"type": "chat_message", "payload": {"content": 42}}), "invalid_message"),
    (json.dumps({"type": "subscribe", "payload": {"channels": "session:x"}}), "invalid_message"),
    (json.dumps({"type": "batch", "payload": {"messages": [{"type": "batch", "payload": {"messages": []}}]}}),
     "invalid_message"),
])
async def test_bad_frames_get_error_events(cluster, clients, bystander, sid, tu, frame, code) -> None:
    async with websockets.connect(chat_url(cluster, 0, sid)) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "sloppy", [sid])}))
        await asyncio.wait_for(ws.recv(), 5 * tu)
        await ws.send(frame)
        while (ev := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "error":
            pass
        assert ev["payload"]["code"] == code and ev["payload"]["message"]
        # the connection itself survives bad frames
        await ws.send(json.dumps({"type": "heartbeat", "payload": {}}))
        while (ev := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "connection_heartbeat":
            pass
    await _still_works(bystander, tu)


async def test_oversized_frame_closes_1009(cluster, bystander, sid, tu) -> None:
    async with websockets.connect(chat_url(cluster, 0, sid), max_size=None) as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "big", [sid])}))
        await asyncio.wait_for(ws.recv(), 5 * tu)
        await ws.send(json.dumps({"type": "chat_message", "payload": {"content": "x" * 200_000}}))
        code, _ = await _closed_with(ws, tu)
    assert code == 1009
    await _still_works(bystander, tu)


async def test_bad_input_is_counted_in_metrics(cluster, tu) -> None:
    port = cluster.by_role("edge")[0].port
    async with httpx.AsyncClient(timeout=5 * tu) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    # earlier tests in this module sent bad tokens and bad frames to edge 0
    assert 'edge_auth_total{result="invalid_token"}' in text
    assert 'edge_client_errors_total{code="unknown_type"}' in text
    assert 'edge_closes_total{code="4001"}' in text
