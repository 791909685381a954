"""`bench/floor/floor_picows.py`, the floor of a durable two-node design (docs/performance.md,
seventeenth session), must do the two things its numbers stand for: deliver a message only once
Redis has stored it, and reach a room's members on the other node. A real redis-server, two real
node processes and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.support import free_port
from tests.support.redis_server import RedisServer

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floor" / "floor_picows.py"


@pytest.fixture
def store() -> Iterator[RedisServer]:
    with RedisServer() as server:  # its own: the test stops it
        yield server


@pytest.fixture
def nodes(store: RedisServer) -> Iterator[list[int]]:
    ws, links = [free_port(), free_port()], [free_port(), free_port()]
    procs = [subprocess.Popen(
        [sys.executable, str(FLOOR), "--port", str(ws[i]), "--link", str(links[i]),
         "--peer", str(links[1 - i]), "--redis", store.url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    try:
        for p in procs:  # each prints one line once it listens (after its peer's link is up)
            assert p.stdout is not None
            assert "listening" in p.stdout.readline(), "a floor node did not start"
        yield ws
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


async def _join(port: int, room: str) -> websockets.ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
    await ws.send(json.dumps({"type": "join", "room": room}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "joined", "room": room}
    return ws


async def test_a_message_is_delivered_on_both_nodes_only_after_redis_stored_it(
        nodes: list[int], store: RedisServer, tu: float) -> None:
    sender, local, remote = (await _join(nodes[0], "r1"), await _join(nodes[0], "r1"),
                             await _join(nodes[1], "r1"))
    try:
        assert store.pid is not None
        os.kill(store.pid, signal.SIGSTOP)
        try:
            for i in range(3):
                await sender.send(json.dumps({"type": "pub", "room": "r1", "data": {"i": i}}))
            with pytest.raises(TimeoutError):  # not stored, so not delivered
                await asyncio.wait_for(local.recv(), 0.5 * tu)
        finally:
            os.kill(store.pid, signal.SIGCONT)
        for ws in (sender, local, remote):
            got = [json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)) for _ in range(3)]
            assert got == [{"type": "msg", "room": "r1", "data": {"i": i}} for i in range(3)]
        assert store.command("XLEN", "floor:r1") == "3"
    finally:
        for ws in (sender, local, remote):
            await ws.close()
