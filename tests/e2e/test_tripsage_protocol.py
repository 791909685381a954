"""The TripSage browser client's exact frames, sent over a raw WebSocket.

Frames are copied from TripSage's `websocket-client.ts`: an untyped auth frame, then
`{type, payload, timestamp}` messages, `batch`, `subscribe` with `unsubscribe_channels`, and
`heartbeat`. Its Zod schemas reject `null` for optional fields, so no frame may carry one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.e2e.conftest import chat_url, token_for


def _no_nulls(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return all(_no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_nulls(v) for v in value)
    return True


class Raw:
    def __init__(self, ws: Any, tu: float) -> None:
        self.ws, self.tu, self.seen = ws, tu, []

    async def send(self, type_: str, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({"type": type_, "payload": payload,
                                       "timestamp": "2026-01-01T00:00:00.000Z"}))

    async def until(self, type_: str) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 5 * self.tu))
            self.seen.append(frame)
            if frame.get("type") == type_:
                return frame


async def test_tripsage_client_frames(cluster, sid, tu) -> None:
    token = token_for(cluster, "traveller", [sid])
    async with websockets.connect(chat_url(cluster, 0, sid)) as ws:
        raw = Raw(ws, tu)
        await ws.send(json.dumps({"token": token, "session_id": sid, "channels": [f"session:{sid}"]}))
        auth = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        raw.seen.append(auth)
        assert auth["success"] is True
        assert isinstance(auth["connection_id"], str) and auth["connection_id"]
        assert auth["user_id"] == "traveller" and auth["session_id"] == sid
        assert auth["connectionId"] == auth["connection_id"] and auth["sessionId"] == sid
        assert f"session:{sid}" in auth["available_channels"]

        await raw.send("chat_message", {"content": "Find me a hotel in Lisbon", "attachments": []})
        msg = await raw.until("chat_message")
        assert msg["payload"]["content"] == "Find me a hotel in Lisbon"
        assert msg["session_id"] == sid and msg["user_id"] == "traveller"
        assert isinstance(msg["id"], str) and isinstance(msg["timestamp"], str)
        assert msg["offset"] >= 1 and msg["epoch"]

        await raw.send("batch", {"messages": [
            {"type": "chat_message", "payload": {"content": "first"}, "timestamp": "t"},
            {"type": "chat_message", "payload": {"content": "second"}, "timestamp": "t"},
            {"type": "heartbeat", "payload": {"timestamp": "t"}, "timestamp": "t"},
        ]})
        start = len(raw.seen)
        first = await raw.until("chat_message")
        second = await raw.until("chat_message")
        assert [first["payload"]["content"], second["payload"]["content"]] == ["first", "second"]
        assert second["offset"] == first["offset"] + 1
        # the heartbeat reply is a control frame: it may overtake the stored messages
        if not any(f["type"] == "connection_heartbeat" for f in raw.seen[start:]):
            await raw.until("connection_heartbeat")

        await raw.send("subscribe", {"channels": ["agent_status:traveller", "user:somebody-else",
                                                  "session:not-mine"],
                                     "unsubscribe_channels": []})
        resp = await raw.until("subscribe_response")
        assert resp["payload"]["subscribed_channels"] == ["agent_status:traveller"]
        assert resp["payload"]["failed_channels"] == ["user:somebody-else", "session:not-mine"]
        assert "success" not in resp  # only the auth reply has a top-level success key

        await raw.send("subscribe", {"channels": [], "unsubscribe_channels": ["agent_status:traveller"]})
        resp = await raw.until("subscribe_response")
        assert resp["payload"]["unsubscribed_channels"] == ["agent_status:traveller"]

        await raw.send("heartbeat", {"timestamp": "2026-01-01T00:00:00.000Z"})
        beat = await raw.until("connection_heartbeat")
        assert beat["payload"]["connection_id"] == auth["connection_id"]

    assert all(_no_nulls(f) for f in raw.seen), [f for f in raw.seen if not _no_nulls(f)]
    assert sum(1 for f in raw.seen if "success" in f) == 1


async def test_typed_auth_frame_with_payload_and_camel_case(cluster, sid, tu) -> None:
    token = token_for(cluster, "docs-user", [sid])
    async with websockets.connect(chat_url(cluster, 1, sid, prefix="")) as ws:
        await ws.send(json.dumps({"type": "auth", "payload": {"token": token, "sessionId": sid}}))
        auth = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        assert auth["success"] is True and auth["sessionId"] == sid
        await ws.send(json.dumps({"type": "subscribe",
                                  "payload": {"channels": [f"chat:{sid}"], "unsubscribeChannels": []}}))
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "subscribe_response":
            pass
        assert frame["payload"]["subscribed_channels"] == [f"session:{sid}"]  # chat: is an alias


async def test_agent_status_endpoint_gets_status_events(cluster, publisher, tu) -> None:
    port = cluster.by_role("edge")[1].port
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/ws/agent-status/agent-owner") as ws:
        await ws.send(json.dumps({"token": token_for(cluster, "agent-owner")}))
        auth = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        assert auth["success"] is True and "session_id" not in auth
        await publisher.publish("agent_status:agent-owner", "agent_status_update",
                                {"agent_status": {"is_active": True, "current_task": "search"}})
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "agent_status_update":
            pass
        assert frame["payload"]["agent_status"]["is_active"] is True
        assert frame["channel"] == "agent_status:agent-owner" and "priority" not in frame
