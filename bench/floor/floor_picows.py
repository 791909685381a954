"""The floor of a durable two-node design: what the least a tiered cluster must do costs here.

Not Switchboard. A measuring tool for one question of issue 7: can *any* design that keeps the
project's guarantees in the harness's scenario (every message stored before it is delivered, a
room's members on two server processes) meet "p99 at most 50 ms at 80 % of the maximum" on this
2-core machine, with the load generator on the same cores? The limit server (`limit-py`) mostly meets
it with one process and no store; the project, with four server processes on a message's way
(edge, owner router, Redis, the other edge), does not.

So this is `limit-py` (picows + uvloop + orjson, rooms in memory, the same JSON protocol) with
the two hops no such design can drop, each done as cheaply as Python allows:

- **Store before delivery.** A publish is appended to the room's Redis stream (`XADD`) over one
  pipelined connection per node (every command of an event-loop iteration in one `write()`,
  replies matched in order), and delivered only when its reply (the stream id, the offset) is
  read. One connection keeps each sender's order.
- **A room on two nodes.** Each stored message goes to the local members and, in one frame per
  event-loop iteration, over a TCP link to every other node, which writes it to its members.

No routers, no gRPC, no auth, no recovery, no retries: whatever this costs, the project costs
more. Usage (the harness starts it through `bench/floor/run_harness.py`):

    python floor_picows.py --port 9001 --link 9101 --peer 9102 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from collections import deque
from urllib.parse import urlparse

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

ROOMS: dict[str, set[WSTransport]] = {}
_LEN = struct.Struct(">I")
CONNECT_TIMEOUT_S = 10.0


def deliver_local(room: str, out: bytes) -> None:
    for t in ROOMS.get(room, ()):
        t.send(WSMsgType.TEXT, out)


class Peers:
    """Links to the other nodes: what is stored here in one iteration leaves in one write each."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self._pending: list[bytes] = []
        self._scheduled = False

    def send(self, room: str, out: bytes) -> None:
        if not self.writers:
            return
        r = room.encode()
        self._pending.append(_LEN.pack(len(r)) + r + _LEN.pack(len(out)) + out)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        data = b"".join(self._pending)
        self._pending.clear()
        for w in self.writers:
            w.write(data)


class LinkIn(asyncio.Protocol):
    """A peer's frames: (room, message) pairs, written to this node's members of the room."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            rl = _LEN.unpack_from(buf, pos)[0]
            if n - pos < 8 + rl:
                break
            ml = _LEN.unpack_from(buf, pos + 4 + rl)[0]
            end = pos + 8 + rl + ml
            if n < end:
                break
            room = bytes(buf[pos + 4:pos + 4 + rl]).decode()
            deliver_local(room, bytes(buf[pos + 8 + rl:end]))
            pos = end
        del buf[:pos]


class Store(asyncio.Protocol):
    """One pipelined Redis connection: XADDs of an iteration in one write, replies in order."""

    def __init__(self, peers: Peers) -> None:
        self._peers = peers
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._buf = bytearray()
        self._scheduled = False
        self.lost = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def append(self, room: str, data: bytes, out: bytes) -> None:
        key = b"floor:" + room.encode()
        self._out.append(b"*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n"
                         b"$4\r\n1000\r\n$1\r\n*\r\n$1\r\nd\r\n$%d\r\n%s\r\n"
                         % (len(key), key, len(data), data))
        self._waiting.append((room, out))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        assert self._transport is not None
        self._transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        peers = self._peers
        while pos < n:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            kind = buf[pos]
            if kind == 0x24:  # $len\r\n<id>\r\n: the stored message's id
                ln = int(buf[pos + 1:eol])
                end = eol + 2 + ln + 2
                if n < end:
                    break
            elif kind == 0x2D:  # -ERR: not stored, not delivered (the sender would retry)
                end = eol + 2
                print("store error:", bytes(buf[pos:eol]).decode(), flush=True)
            else:
                raise RuntimeError(f"unexpected reply {bytes(buf[pos:eol])!r}")
            pos = end
            room, out = self._waiting.popleft()
            if kind == 0x24:
                deliver_local(room, out)
                peers.send(room, out)
        del buf[:pos]


class RoomConn(WSListener):
    __slots__ = ("room", "store", "transport")

    def __init__(self, store: Store) -> None:
        self.transport: WSTransport | None = None
        self.room: str | None = None
        self.store = store

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt is WSMsgType.TEXT or mt is WSMsgType.BINARY:
            try:
                msg = orjson.loads(frame.get_payload_as_memoryview())
                kind = msg["type"]
                room = msg["room"]
            except Exception:
                transport.send_close()
                transport.disconnect()
                return
            if kind == "pub":
                data = orjson.dumps(msg.get("data"))
                out = b'{"type":"msg","room":%s,"data":%s}' % (orjson.dumps(room), data)
                self.store.append(room, data, out)
            elif kind == "join":
                if self.room is not None:
                    self._leave()
                ROOMS.setdefault(room, set()).add(transport)
                self.room = room
                transport.send(WSMsgType.TEXT, orjson.dumps({"type": "joined", "room": room}))
        elif mt is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def _leave(self) -> None:
        members = ROOMS.get(self.room or "")
        if members is not None and self.transport is not None:
            members.discard(self.transport)
            if not members:
                del ROOMS[self.room or ""]
        self.room = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.room is not None:
            self._leave()


async def connect_peer(loop: asyncio.AbstractEventLoop, port: int) -> asyncio.StreamWriter:
    """The peer's link, retried until it listens (nodes start in any order), bounded."""
    deadline = loop.time() + CONNECT_TIMEOUT_S
    while True:
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            return writer
        except (OSError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def main(a: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    peers = Peers()
    u = urlparse(a.redis)
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        _, store = await loop.create_connection(lambda: Store(peers), u.hostname, u.port or 6379)
    link_server = await loop.create_server(LinkIn, "127.0.0.1", a.link)
    peers.writers = [await connect_peer(loop, p) for p in a.peer]
    server = await ws_create_server(lambda _req: RoomConn(store), "127.0.0.1", a.port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor node listening on {a.port} (link {a.link}, peers {a.peer})", flush=True)
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(store.lost.wait())]
    try:
        async with server, link_server:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        for writer in peers.writers:
            writer.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--link", type=int, required=True, help="this node's link port")
    ap.add_argument("--peer", type=int, action="append", default=[], help="another node's link port")
    ap.add_argument("--redis", required=True)
    uvloop.run(main(ap.parse_args()))
