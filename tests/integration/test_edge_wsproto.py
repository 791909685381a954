"""The edge's own WebSocket protocol (services/edge/wsserver.py) against real clients.

A real edge (uvicorn from `server_config`, on a free loopback port) with a real history and router
(gRPC on 127.0.0.1, the in-memory store) in this process. Clients are the `websockets` library
and raw asyncio sockets, which can send what a library never would: unmasked frames, reserved
opcodes, invalid UTF-8, a bad handshake, a client that never answers a ping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
import websockets

from services.common.auth import mint_token
from services.common.settings import Settings
from services.edge.app import server_config
from services.history.server import running as running_history
from services.router.server import running as running_router
from tests.support import free_port

SECRET = "test-jwt-secret-for-the-wsproto-suite"
SERVICE = "test-service-token"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test's loop owns the signals
        yield


@dataclass
class Edge:
    port: int
    settings: Settings

    def url(self, sid: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/ws/chat/{sid}"

    def token(self, user: str, sid: str) -> str:
        return mint_token(SECRET, user, sessions=[sid], ttl_s=600)


MakeEdge = Callable[..., Awaitable[Edge]]


@pytest.fixture
async def make_edge(tu: float) -> AsyncIterator[MakeEdge]:
    """Starts an edge (and the history and router it needs) with settings overrides; `asgi=True`
    serves WebSockets through uvicorn's own protocol and Starlette (the fallback path). An edge
    given another `store_url` finds no router: its attaches wait for the attach timeout."""
    async with contextlib.AsyncExitStack() as stack:
        store = f"memory://wsproto-{uuid.uuid4().hex[:8]}"

        def settings(node_id: str, port: int, **kw: Any) -> Settings:
            return Settings(**{"node_id": node_id, "port": port, "store_url": store, "jwt_secret": SECRET,
                               "service_token": SERVICE, "log_json": False, "log_level": "warning", **kw})

        await stack.enter_async_context(running_history(settings("history-1", 0)))
        await stack.enter_async_context(running_router(settings("router-1", 0)))

        async def make(asgi: bool = False, **kw: Any) -> Edge:
            s = settings(f"edge-{uuid.uuid4().hex[:4]}", free_port(), **kw)
            config = server_config(s)
            if asgi:
                config.ws = "websockets-sansio"
            server = _Server(config)
            task = asyncio.create_task(server.serve())

            async def stop() -> None:
                server.should_exit = True
                await asyncio.wait_for(task, 30 * tu)

            stack.push_async_callback(stop)
            await asyncio.wait_for(server.up.wait(), 20 * tu)
            return Edge(s.port, s)

        yield make


@pytest.fixture
def sid() -> str:
    return "s-" + uuid.uuid4().hex[:10]


# ---- a raw client ----------------------------------------------------------------------------


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Raw:
    """A WebSocket client on a plain asyncio connection: sends whatever bytes it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tu: float) -> None:
        self.reader, self.writer, self.tu = reader, writer, tu

    @classmethod
    async def open(cls, port: int, path: str, tu: float, *, key: str | None = None,
                   headers: str | None = None) -> tuple[Raw, bytes]:
        """Connect and send a handshake; returns the client and the response head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = key or base64.b64encode(os.urandom(16)).decode()
        head = headers if headers is not None else (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode())
        raw = cls(reader, writer, tu)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * tu)
        return raw, response

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> tuple[int, bool, bytes]:
        """(opcode, fin, payload) of the next server frame."""
        async with asyncio.timeout(10 * self.tu):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "server frames are not masked"
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, bool(b0 & 0x80), await self.reader.readexactly(n)

    async def until(self, opcode: int) -> bytes:
        while True:
            op, _, payload = await self.frame()
            if op == opcode:
                return payload

    async def close_code(self) -> int:
        payload = await self.until(0x8)
        return int(struct.unpack("!H", payload[:2])[0])

    async def eof(self) -> bool:
        async with asyncio.timeout(10 * self.tu):
            while await self.reader.read(65536):
                pass
        return True

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def raws() -> AsyncIterator[list[Raw]]:
    made: list[Raw] = []
    yield made
    for r in made:
        await r.aclose()


async def open_raw(edge: Edge, sid: str, tu: float, raws: list[Raw], **kw: Any) -> tuple[Raw, bytes]:
    raw, head = await Raw.open(edge.port, kw.pop("path", f"/api/ws/chat/{sid}"), tu, **kw)
    raws.append(raw)
    return raw, head


async def authenticated(edge: Edge, sid: str, tu: float, raws: list[Raw]) -> Raw:
    raw, head = await open_raw(edge, sid, tu, raws)
    assert head.startswith(b"HTTP/1.1 101 ")
    raw.send(masked(0x1, json.dumps({"token": edge.token("alice", sid)}).encode()))
    assert json.loads(await raw.until(0x1))["success"] is True
    return raw


# ---- the opening handshake -------------------------------------------------------------------


async def test_the_handshake_is_answered_with_the_rfc_accept_key(make_edge: MakeEdge, sid: str, tu: float,
                                                                 raws: list[Raw]) -> None:
    edge = await make_edge()
    key = base64.b64encode(os.urandom(16)).decode()
    _, head = await open_raw(edge, sid, tu, raws, key=key)
    lines = head.decode().split("\r\n")
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    assert fields["upgrade"].lower() == "websocket" and fields["connection"].lower() == "upgrade"
    assert fields["sec-websocket-accept"] == expected
    assert "sec-websocket-extensions" not in fields  # prepared frames are never compressed


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/ws/chat/x", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\n"
     "Sec-WebSocket-Version: 13\r\n", 400),                                    # key not 16 bytes
    ("/ws/chat/x", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Version: 13\r\n", 400),                                    # no key
    ("/ws/chat/x", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", 400),                   # no version
    ("/ws/chat/x", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 8\r\n", 426),
    ("/ws/nowhere/x", "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n", 404),
    ("/ws/chat/a/b", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n", 404),
])
async def test_a_bad_handshake_gets_an_http_error_and_the_connection_ends(
        make_edge: MakeEdge, tu: float, raws: list[Raw], path: str, headers: str, status: int) -> None:
    edge = await make_edge()
    raw, head = await open_raw(edge, "", tu, raws, path=path, headers=headers)
    status_line, *lines = head.decode().split("\r\n")
    assert status_line.split(" ")[1] == str(status)
    if status == 426:
        assert "Sec-WebSocket-Version: 13" in lines
    assert await raw.eof()


async def trickle(writer: asyncio.StreamWriter, data: bytes, size: int) -> None:
    """Send in chunks of `size` bytes, each in its own TCP segment as far as the kernel allows."""
    for at in range(0, len(data), size):
        writer.write(data[at:at + size])
        await writer.drain()
        await asyncio.sleep(0.002)


async def test_http_and_websockets_share_the_port_however_requests_arrive(
        make_edge: MakeEdge, sid: str, tu: float) -> None:
    """The edge's HTTP protocol sends a WebSocket route's GET straight to the edge's WebSocket
    protocol and everything else to uvicorn's: whole, byte by byte, or after a kept-alive request."""
    edge = await make_edge()
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (f"GET /ws/chat/{sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    auth = masked(0x1, json.dumps({"token": edge.token("alice", sid)}).encode())
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for chunk, first in ((1, health), (1, upgrade), (5, upgrade), (len(upgrade), health + upgrade)):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        raw = Raw(reader, writer, tu)
        try:
            await trickle(writer, first, chunk)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * tu)
            if first.startswith(health):
                assert head.startswith(b"HTTP/1.1 200 "), head
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if first == health:
                    continue
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * tu)
            assert head.startswith(b"HTTP/1.1 101 "), (chunk, head)
            raw.send(auth)
            assert json.loads(await raw.until(0x1))["success"] is True
        finally:
            await raw.aclose()


async def test_a_plain_get_on_a_websocket_route_is_refused(make_edge: MakeEdge, sid: str, tu: float,
                                                           raws: list[Raw]) -> None:
    edge = await make_edge()
    raw, head = await open_raw(edge, sid, tu, raws, path=f"/ws/chat/{sid}", headers="Accept: */*\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert await raw.eof()


# ---- frames ----------------------------------------------------------------------------------


async def test_an_unmasked_client_frame_closes_1002(make_edge: MakeEdge, sid: str, tu: float,
                                                     raws: list[Raw]) -> None:
    edge = await make_edge()
    raw, _ = await open_raw(edge, sid, tu, raws)
    raw.send(b"\x81\x02{}")
    assert await raw.close_code() == 1002
    assert await raw.eof()


@pytest.mark.parametrize("frame", [masked(0x1, b"{}", rsv=0x40), masked(0x3, b""),
                                   masked(0x9, b"x" * 126), masked(0x0, b"{}")])
async def test_reserved_bits_opcodes_and_broken_frames_close_1002(make_edge: MakeEdge, sid: str, tu: float,
                                                                  raws: list[Raw], frame: bytes) -> None:
    edge = await make_edge()
    raw = await authenticated(edge, sid, tu, raws)
    raw.send(frame)
    assert await raw.close_code() == 1002


async def test_a_fragmented_message_is_reassembled_and_pings_between_fragments_answered(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    edge = await make_edge()
    raw, _ = await open_raw(edge, sid, tu, raws)
    auth = json.dumps({"token": edge.token("alice", sid)}).encode()
    third = len(auth) // 3
    raw.send(masked(0x1, auth[:third], fin=False))
    raw.send(masked(0x9, b"between"))
    raw.send(masked(0x0, auth[third:2 * third], fin=False))
    raw.send(masked(0x0, auth[2 * third:]))
    assert await raw.frame() == (0xA, True, b"between")
    assert json.loads((await raw.frame())[2])["success"] is True


async def test_the_library_client_pings_and_talks(make_edge: MakeEdge, sid: str, tu: float) -> None:
    edge = await make_edge()
    async with websockets.connect(edge.url(sid)) as ws:
        await ws.send(json.dumps({"token": edge.token("alice", sid)}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))["success"] is True
        await asyncio.wait_for(await ws.ping(b"are you there"), 5 * tu)
        await ws.send(json.dumps({"type": "chat_message", "payload": {"content": "hi"}}))
        while (ev := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "chat_message":
            pass
        assert ev["payload"]["content"] == "hi"


async def test_a_message_over_the_limit_closes_1009(make_edge: MakeEdge, sid: str, tu: float,
                                                    raws: list[Raw]) -> None:
    edge = await make_edge(max_frame_bytes=4096)
    async with websockets.connect(edge.url(sid), max_size=None) as ws:
        await ws.send(json.dumps({"token": edge.token("alice", sid)}))
        await asyncio.wait_for(ws.recv(), 5 * tu)
        await ws.send(json.dumps({"type": "chat_message", "payload": {"content": "x" * 5000}}))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5 * tu)
    assert ws.close_code == 1009
    # in fragments, each under the limit, the same
    raw = await authenticated(edge, sid, tu, raws)
    raw.send(masked(0x1, b"y" * 3000, fin=False))
    raw.send(masked(0x0, b"y" * 3000))
    assert await raw.close_code() == 1009


async def test_invalid_utf8_in_a_text_message_closes_1007(make_edge: MakeEdge, sid: str, tu: float,
                                                          raws: list[Raw]) -> None:
    edge = await make_edge()
    raw = await authenticated(edge, sid, tu, raws)
    raw.send(masked(0x1, b'{"type": "heartbeat", "x": "\xff\xfe"}'))
    assert await raw.close_code() == 1007


@pytest.mark.parametrize(("sent", "echoed"), [(struct.pack("!H", 4321) + b"bye", 4321), (b"", 1000),
                                              (struct.pack("!H", 1005), 1002), (b"\x03", 1002),
                                              (struct.pack("!H", 1000) + b"\xff", 1002)])
async def test_a_close_is_echoed_then_the_server_ends_the_connection(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw], sent: bytes, echoed: int) -> None:
    edge = await make_edge()
    raw = await authenticated(edge, sid, tu, raws)
    raw.send(masked(0x8, sent))
    assert await raw.close_code() == echoed
    assert await raw.eof()


async def test_a_client_that_stops_answering_pings_is_closed(make_edge: MakeEdge, sid: str, tu: float,
                                                             raws: list[Raw]) -> None:
    edge = await make_edge(ping_interval_s=0.2 * tu)
    raw = await authenticated(edge, sid, tu, raws)
    assert await raw.until(0x9) == b""
    raw.send(masked(0xA, b""))  # the first ping is answered...
    assert await raw.until(0x9) == b""
    assert await raw.close_code() == 1011  # ...the second is not
    assert await raw.eof()


async def test_a_client_that_sends_without_reading_is_paused_not_buffered(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """Many heartbeats at once: each is answered, in order, and the connection lives on."""
    edge = await make_edge()
    raw = await authenticated(edge, sid, tu, raws)
    raw.send(b"".join(masked(0x1, b'{"type": "heartbeat", "payload": {}}') for _ in range(300)))
    answered = 0
    while answered < 300:
        if json.loads(await raw.until(0x1))["type"] == "connection_heartbeat":
            answered += 1
    raw.send(masked(0x8, struct.pack("!H", 1000)))
    assert await raw.close_code() == 1000


# ---- connections without a task of their own ---------------------------------------------


async def stats(edge: Edge) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{edge.port}/api/v1/stats", timeout=5.0)
    body: dict[str, Any] = r.json()
    return body


async def eventually(check: Callable[[], Awaitable[bool]], tu: float) -> None:
    async with asyncio.timeout(10 * tu):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_idle_connections_hold_no_task_and_still_get_every_event(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """A connection that only listens costs no task (memory per idle connection); deliveries
    reach it all the same, and one that speaks or leaves is served and let go as before."""
    edge = await make_edge()
    await authenticated(edge, sid, tu, raws)  # the session's channels are live from here on
    before = len(asyncio.all_tasks())
    listeners = [await authenticated(edge, sid, tu, raws) for _ in range(20)]
    assert len(asyncio.all_tasks()) - before < 5  # one task per connection would be 20 more
    speaker = listeners.pop()
    speaker.send(masked(0x1, b'{"type": "chat_message", "payload": {"content": "to all"}}'))
    for raw in [*listeners, speaker]:
        while (ev := json.loads(await raw.until(0x1)))["type"] != "chat_message":
            pass
        assert ev["payload"]["content"] == "to all" and ev["offset"] >= 1
    for raw in listeners[:10]:
        raw.send(masked(0x8, struct.pack("!H", 1000)))
        assert await raw.close_code() == 1000

    async def let_go() -> bool:
        return bool((await stats(edge))["active_connections"] == 11)  # the first, 9 listeners, the speaker

    await eventually(let_go, tu)


async def test_heartbeats_are_answered_without_a_task_and_still_rate_limited(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """A client that listens and sends heartbeats (the TypeScript client's idle traffic) keeps
    no task: every beat is answered and counted. A beat over the rate limit is refused as any
    message is, and a chat message still reaches the session."""
    edge = await make_edge(client_rate_per_s=0.01, client_burst=4)
    await authenticated(edge, sid, tu, raws)
    before = len(asyncio.all_tasks())
    beaters = [await authenticated(edge, sid, tu, raws) for _ in range(10)]
    async def reply(raw: Raw) -> dict[str, Any]:  # passes over what the session's joins send
        while (ev := json.loads(await raw.until(0x1)))["type"] in ("connection_established", "presence_join"):
            pass
        return ev

    for _ in range(3):
        for raw in beaters:
            raw.send(masked(0x1, b'{"type": "heartbeat", "payload": {}}'))
        for raw in beaters:
            beat = await reply(raw)
            assert beat["type"] == "connection_heartbeat" and beat["payload"]["timestamp"]
    assert len(asyncio.all_tasks()) - before < 5  # one task per connection would be 10 more
    assert (await metric(edge, 'edge_frames_in_total{type="heartbeat"}')) == 30

    flooder = beaters[0]
    flooder.send(masked(0x1, b'{"type": "ping"}') * 2)  # the burst of 4 is spent after these
    flooder.send(masked(0x1, b'{"type": "heartbeat"}'))
    got = [await reply(flooder) for _ in range(2)]
    assert [g["type"] for g in got] == ["connection_heartbeat", "error"]
    assert got[1]["payload"]["code"] == "rate_limited"

    beaters[1].send(masked(0x1, b'{"type": "chat_message", "payload": {"content": "still here"}}'))
    while (ev := json.loads(await beaters[2].until(0x1)))["type"] != "chat_message":
        pass
    assert ev["payload"]["content"] == "still here"


class Pinged:
    """Reads a raw client's frames in the background, answering every ping as a browser does."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            op, _, payload = await self.raw.frame()
            if op == 0x9:
                self.raw.send(masked(0xA, payload))
            elif op == 0x1:
                self.events.put_nowait(json.loads(payload))
            elif op == 0x8:
                return

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def chat(self, content: str) -> None:
        """Wait for a chat_message with this content (earlier events are passed over)."""
        async with asyncio.timeout(10 * self.raw.tu):
            while True:
                ev = await self.events.get()
                if ev["type"] == "chat_message" and ev["payload"]["content"] == content:
                    return


async def test_a_connection_that_spoke_lets_its_task_go_at_a_keepalive_ping(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """A chat user's connection gets a task with its first message; a keepalive ping that finds
    the task waiting lets it go, and the connection goes on as before: it gets events, speaks
    again (a task again, let go again) and closes cleanly."""
    edge = await make_edge(ping_interval_s=0.3 * tu)
    listener = Pinged(await authenticated(edge, sid, tu, raws))
    speaker = Pinged(await authenticated(edge, sid, tu, raws))
    before = len(asyncio.all_tasks())

    async def rested() -> bool:
        return len(asyncio.all_tasks()) <= before

    chat = b'{"type": "chat_message", "payload": {"content": "%s"}}'
    speaker.raw.send(masked(0x1, chat % b"one"))
    await listener.chat("one")
    await speaker.chat("one")
    await eventually(rested, tu)  # one task per connection that spoke would never leave

    listener.raw.send(masked(0x1, chat % b"two"))
    await speaker.chat("two")
    speaker.raw.send(masked(0x1, chat % b"three"))
    await listener.chat("three")
    await eventually(rested, tu)

    await speaker.stop()
    speaker.raw.send(masked(0x8, struct.pack("!H", 1000)))
    assert await speaker.raw.close_code() == 1000

    async def let_go() -> bool:
        s = await stats(edge)
        return bool(s["active_connections"] == 1 and s["connections_by_status"]["authenticating"] == 0)

    await eventually(let_go, tu)
    await listener.stop()


async def metric(edge: Edge, sample: str) -> float:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{edge.port}/metrics", timeout=5.0)
    for line in r.text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in /metrics")


async def test_every_frame_a_fan_out_writes_is_counted_with_its_bytes_and_latency(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """The hub counts the frames one delivery writes to its subscribers at once: the frames,
    bytes and delivery latencies on /metrics are still one per frame a client received."""
    edge = await make_edge()
    clients = [await authenticated(edge, sid, tu, raws) for _ in range(6)]
    # alice's presence is announced once, to every client subscribed by then (and counted with a
    # latency, in another lane): the first client hears it, so it is written before we count
    async with asyncio.timeout(10 * tu):
        while json.loads(await clients[0].until(0x1)).get("type") != "presence_join":
            pass
    durable = 'edge_frames_out_total{lane="durable"}'
    sent = 'edge_bytes_out_total{lane="durable"}'
    latencies = "edge_delivery_latency_seconds_count"
    before = [await metric(edge, name) for name in (durable, sent, latencies)]
    chat = b'{"type": "chat_message", "payload": {"content": "%d"}}'
    for i in range(3):
        clients[i].send(masked(0x1, chat % i))
    received, size = 0, 0
    for raw in clients:
        got: set[str] = set()
        while len(got) < 3:
            op, _, payload = await raw.frame()
            ev = json.loads(payload) if op == 0x1 else {}
            if ev.get("type") == "chat_message":
                got.add(ev["payload"]["content"])
                received += 1
                size += len(payload) + (2 if len(payload) < 126 else 4)  # the frame's header
    after = [await metric(edge, name) for name in (durable, sent, latencies)]
    assert received == 18
    assert [a - b for a, b in zip(after, before, strict=True)] == [18, size, 18]


async def test_a_message_sent_behind_the_auth_frame_is_handled_after_the_reply(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """A client need not wait for the reply: what it sends right behind the auth frame (here in
    the same TCP segment, while the session's channel attaches) is handled after it, in order."""
    edge = await make_edge()
    raw, _ = await open_raw(edge, sid, tu, raws)
    raw.send(masked(0x1, json.dumps({"token": edge.token("alice", sid)}).encode())
             + masked(0x1, b'{"type": "chat_message", "payload": {"content": "first"}}')
             + masked(0x1, b'{"type": "heartbeat", "payload": {}}'))
    seen: list[str] = []
    while len(seen) < 4:
        frame = json.loads(await raw.until(0x1))
        seen.append("reply" if "success" in frame else frame["type"])
        if frame.get("type") == "chat_message":
            assert frame["payload"]["content"] == "first"
    assert seen[0] == "reply" and seen[1] == "connection_established"
    assert sorted(seen[2:]) == ["chat_message", "connection_heartbeat"]


async def test_a_client_leaving_while_its_channels_attach_is_let_go(
        make_edge: MakeEdge, sid: str, tu: float, raws: list[Raw]) -> None:
    """With no router to answer, a connection waits for its attaches (up to the RPC timeout).
    One that leaves meanwhile is released at once; one that stays gets its reply at the timeout."""
    edge = await make_edge(store_url=f"memory://no-router-{uuid.uuid4().hex[:6]}", rpc_timeout_s=2.0 * tu)
    leaving, _ = await open_raw(edge, sid, tu, raws)
    leaving.send(masked(0x1, json.dumps({"token": edge.token("alice", sid)}).encode()))

    async def waiting(n: int) -> bool:
        return bool((await stats(edge))["connections_by_status"]["authenticating"] == n)

    await eventually(lambda: waiting(1), tu)
    await leaving.aclose()
    await eventually(lambda: waiting(0), tu)
    assert (await stats(edge))["active_connections"] == 0

    staying, _ = await open_raw(edge, sid, tu, raws)
    started = asyncio.get_running_loop().time()
    staying.send(masked(0x1, json.dumps({"token": edge.token("alice", sid)}).encode()))
    reply = json.loads(await staying.until(0x1))
    assert reply["success"] is True and f"session:{sid}" in reply["subscribed_channels"]
    assert asyncio.get_running_loop().time() - started >= 1.5 * tu  # it waited for the timeout


# ---- the ASGI fallback -----------------------------------------------------------------------


@pytest.mark.parametrize("asgi", [False, True], ids=["own-protocol", "asgi-fallback"])
async def test_both_servers_run_the_same_connection(make_edge: MakeEdge, sid: str, tu: float,
                                                    asgi: bool) -> None:
    edge = await make_edge(asgi=asgi)
    async with websockets.connect(edge.url(sid)) as ws:
        await ws.send(json.dumps({"token": edge.token("alice", sid)}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        assert reply["success"] is True and reply["session_id"] == sid
        established = json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))
        assert established["type"] == "connection_established"
        await ws.send(json.dumps({"type": "chat_message", "payload": {"content": "both"}}))
        while (ev := json.loads(await asyncio.wait_for(ws.recv(), 5 * tu)))["type"] != "chat_message":
            pass
        assert ev["payload"]["content"] == "both"
    async with websockets.connect(edge.url(sid)) as ws:  # a bad token: the documented close
        await ws.send(json.dumps({"token": "not-a-token"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5 * tu))["success"] is False
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5 * tu)
    assert ws.close_code == 4001
