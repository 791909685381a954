"""Demo mode: the edge serves the demo page and its config, and `@agent` messages get the demo
agent's streamed reply, through the normal publish path, to every client of the session."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
import websockets

from services.common.settings import DEV_JWT_SECRET, Settings
from services.devcluster import DevCluster
from services.edge.app import server_config
from tests.e2e.conftest import chat_url, token_for
from tests.support import free_port

AGENT_TYPES = {"chat_message", "agent_status_update", "tool_call_start", "tool_call_complete",
               "chat_message_chunk", "chat_message_complete"}


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "demo"
    d.mkdir()
    (d / "index.html").write_text("<!doctype html><title>Switchboard demo</title>")
    (d / "demo.js").write_text("console.log('demo')")
    (tmp_path / "secret.txt").write_text("not for the web")
    return d


@pytest.fixture
def demo_cluster(make_cluster: Any, demo_dir: Path) -> DevCluster:
    cluster: DevCluster = make_cluster(env={"SWITCHBOARD_DEMO": "true", "SWITCHBOARD_DEMO_DIR": str(demo_dir)})
    return cluster


def http(cluster: DevCluster, edge: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{cluster.by_role('edge')[edge].port}", timeout=10)


async def test_demo_page_and_config(demo_cluster: DevCluster, tu: float) -> None:
    edges = demo_cluster.by_role("edge")
    async with http(demo_cluster, 1) as c:
        index = await c.get("/", params={"session": "abc", "user": "alice"})
        assert index.status_code == 200 and "Switchboard demo" in index.text
        assert index.headers["content-type"].startswith("text/html")
        script = await c.get("/demo/demo.js")
        assert script.status_code == 200 and script.text == "console.log('demo')"
        assert (await c.get("/demo/missing.js")).status_code == 404
        assert (await c.get("/demo/%2E%2E/secret.txt")).status_code == 404

        config = (await c.get("/demo/config.json", params={"user": "alice", "session": "abc"})).json()
        defaults = (await c.get("/demo/config.json")).json()
    assert config["user_id"] == "alice" and config["session_id"] == "abc"
    assert config["urls"] == [f"ws://127.0.0.1:{edges[1].port}", f"ws://127.0.0.1:{edges[0].port}"]
    assert defaults["session_id"] == "demo" and defaults["user_id"].startswith("guest-")

    # The token is a dev token for that user and session, and it authenticates on any edge.
    claims = jwt.decode(config["token"], DEV_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["sessions"] == ["abc"]
    async with websockets.connect(config["urls"][1] + "/api/ws/chat/abc") as ws:
        await ws.send(json.dumps({"token": config["token"], "session_id": "abc"}))
        reply = json.loads(await ws.recv())
    assert reply["success"] is True and reply["user_id"] == "alice"


async def test_agent_mention_streams_the_contract_sequence_to_every_client(demo_cluster: DevCluster, clients: Any,
                                                                          sid: str, tu: float) -> None:
    alice = clients(chat_url(demo_cluster, 0, sid), token_for(demo_cluster, "alice", [sid]), session_id=sid)
    bob = clients(chat_url(demo_cluster, 1, sid), token_for(demo_cluster, "bob", [sid]), session_id=sid)
    await alice.connect()
    await bob.connect()
    await alice.chat("@agent  what is the plan?")
    reply = "You said: what is the plan?. This reply was streamed word by word."
    pieces = [w + " " for w in reply.split(" ")[:-1]] + [reply.split(" ")[-1]]
    n = 1 + 6 + len(pieces)
    for client in (alice, bob):
        got = []
        while len(got) < n:
            ev = await client.next_event(10 * tu)
            if ev["type"] in AGENT_TYPES:
                got.append(ev)
        assert [e["offset"] for e in got] == list(range(got[0]["offset"], got[0]["offset"] + n))
        user, *agent = got
        assert user["type"] == "chat_message" and user["user_id"] == "alice"
        assert all(e["user_id"] == "agent" and e["channel"] == f"session:{sid}" for e in agent)
        kinds = [e["type"] for e in agent]
        assert kinds == ["agent_status_update", "tool_call_start", "tool_call_complete", "agent_status_update",
                         *["chat_message_chunk"] * len(pieces), "chat_message_complete", "agent_status_update"]
        status = [e["payload"] for e in agent if e["type"] == "agent_status_update"]
        assert status == [{"user_id": "agent", "status": "thinking", "progress": 0},
                          {"user_id": "agent", "status": "streaming", "progress": 50},
                          {"user_id": "agent", "status": "idle", "progress": 100}]
        start, complete = agent[1]["payload"], agent[2]["payload"]
        assert start == {"tool_call_id": start["tool_call_id"], "tool": "lookup",
                         "arguments": {"query": "@agent  what is the plan?"}}
        assert complete == {"tool_call_id": start["tool_call_id"], "tool": "lookup", "result": "ok"}
        chunks = [e for e in agent if e["type"] == "chat_message_chunk"]
        message_id = chunks[0]["payload"]["message_id"]
        assert [c["payload"] for c in chunks] == [
            {"message_id": message_id, "index": i, "content": p, "role": "assistant"} for i, p in enumerate(pieces)]
        assert all(c["priority"] == 3 for c in chunks)
        assert agent[-2]["payload"] == {"message_id": message_id, "content": reply, "role": "assistant"}


async def test_without_demo_mode_there_is_no_page_and_no_config(cluster: DevCluster) -> None:
    async with http(cluster, 0) as c:
        assert (await c.get("/")).status_code == 404
        assert (await c.get("/demo/config.json")).status_code == 404
        assert (await c.get("/demo/demo.js")).status_code == 404


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own handlers
        yield


async def test_a_missing_page_build_says_how_to_build_it(tmp_path: Path, tu: float) -> None:
    """One edge in this process on the in-memory store (no other tier is needed for the page)."""
    port = free_port()
    settings = Settings(demo=True, demo_dir=str(tmp_path / "not-built"), store_url=f"memory://{tmp_path.name}",
                        port=port, jwt_secret=DEV_JWT_SECRET, service_token="t", drain_grace_s=0.2)
    server = _Server(server_config(settings))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10 * tu):
            while True:
                if server.started:
                    break
                await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5 * tu) as c:
            r = await c.get("/")
            config = await c.get("/demo/config.json", params={"user": "a"})
        assert r.status_code == 503 and "npm run build" in r.text
        assert config.json()["urls"] == [f"ws://127.0.0.1:{port}"]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * tu)
