"""The edge's own WebSocket server protocol (RFC 6455), plugged into uvicorn as its `ws` class.

uvicorn's HTTP protocol parses a request; one with `Upgrade: websocket` goes to the `ws` class of
its Config: built with (config, server_state, app_state), given the transport
(`connection_made`) and the request head (`data_received`), then made the transport's protocol.
This class checks the opening handshake (section 4.2), matches the edge's two WebSocket routes
itself, and runs the edge's `Connection` on itself: no ASGI scope, queue or task per message, no
Starlette WebSocket, and after the handshake it keeps only what the connection needs. The
connection is its `handler` while it has no task of its own (connection.py `begin`): messages
are offered to it as they are read, and it is told of the disconnect; `spawn` runs its task.

Frames (section 5): client frames must be masked; text, binary and continuation frames make
messages of at most `ws_max_size` bytes (else 1009); text must be UTF-8 (else 1007); pings are
answered, pongs end the keepalive wait; a close is echoed and the transport closed; anything
malformed closes with 1002. The server pings every `ws_ping_interval` seconds and closes (1011)
a connection whose pong does not come within `ws_ping_timeout`.

Flow control: at most INBOX_MAX unread messages per connection; past that the transport stops
reading until the connection reads. pause_writing/resume_writing drive `writable`, which the
connection's writer and `close` wait on. A close we start waits CLOSE_TIMEOUT_S for the peer's
answer, then the transport is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from services.common.close_codes import CloseCode
from services.edge.connection import Kind, begin
from services.edge.context import EdgeContext
from services.edge.wsproto import Disconnected, FrameWriter, MessageHandler, Released, text_frame

log = structlog.get_logger("switchboard.edge")

ROUTES: tuple[tuple[str, Kind], ...] = (("/ws/chat/", "chat"), ("/ws/agent-status/", "agent_status"))
PREFIXES = ("", "/api")  # every route is served at /ws/... and at /api/ws/...
HANDSHAKE, OPEN, CLOSING, CLOSED = range(4)  # a connection's states, in order
INBOX_MAX = 8  # unread messages before the transport stops reading
MAX_HEAD = 16 * 1024  # bytes of a request head
CLOSE_TIMEOUT_S = 5.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PING = b"\x89\x00"
# Close codes a peer may send (section 7.4): 1004-1006 and 1015 never appear in a close frame.
VALID_CLOSE = frozenset((*range(1000, 1004), *range(1007, 1015))) | frozenset(range(3000, 5000))


def route_of(path: str) -> tuple[Kind, str] | None:
    """(kind, id) of a WebSocket path such as /api/ws/chat/ID, or None."""
    for prefix in PREFIXES:
        for base, kind in ROUTES:
            start = prefix + base
            if path.startswith(start):
                rest = path[len(start):]
                if rest and "/" not in rest:
                    return kind, rest
    return None


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # the hash RFC 6455 names


def unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def close_frame(code: int, reason: str = "") -> bytes:
    body = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(body))) + body


class EdgeWebSocketProtocol(FrameWriter, asyncio.Protocol):
    """One WebSocket connection of the edge: the handshake, frames, keepalive and flow control,
    and the `ClientSocket` its `Connection` reads and writes."""

    __slots__ = ("_app_state", "_buf", "_close_code", "_config", "_drain", "_frag",
                 "_frag_size", "_frag_text", "_inbox", "_pong_due", "_read_paused", "_server_state",
                 "_state", "_timer", "_waiter", "_write_paused", "handler", "on_ping", "transport")
    transport: asyncio.Transport

    def __init__(self, config: Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state: dict[str, Any] | None = app_state  # until the handshake is answered
        self._buf = b""  # bytes received and not parsed yet
        self._inbox: list[str | bytes] | None = None
        self._waiter: asyncio.Future[str | bytes] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._frag: list[bytes] | None = None
        self._frag_text = False
        self._frag_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._close_code: int | None = None  # once set, receive() raises Disconnected(code)
        self._state = HANDSHAKE  # CLOSING: a close frame (or an HTTP refusal) is out
        self._pong_due = False
        self._read_paused = False
        self._write_paused = False
        self.handler: MessageHandler | None = None  # the connection, while it has no task
        self.on_ping: Callable[[], None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._server_state.connections.discard(self)
        self._set_timer(None)
        self._disconnect(1006)
        self._wake_writers()

    def eof_received(self) -> None:
        return None  # the transport closes itself

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or failed: nothing more is read
        self._buf = self._buf + data if self._buf else data
        if self._state == HANDSHAKE:
            self._handshake()
        else:
            self._parse()

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1012 (the client reconnects elsewhere)."""
        if self._state == OPEN:
            code = int(CloseCode.SERVICE_RESTART)
            self.transport.write(close_frame(code, "service restart"))
            self._state = CLOSING
            self._disconnect(code)
        self._finish()

    # ---- the opening handshake -------------------------------------------------------------

    def _handshake(self) -> None:
        data = self._buf
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD:
                self._respond(400, "request head too large")
            return
        self._buf = data[end + 4:]
        lines = data[:end].split(b"\r\n")
        request = lines[0].split(b" ")
        if len(request) != 3 or request[0] != b"GET" or request[2] != b"HTTP/1.1":
            self._respond(400, "a WebSocket handshake is a GET request over HTTP/1.1")
            return
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name in headers:  # Connection and Upgrade may repeat; the key and version not
                headers[name] += b"," + value.strip()
            else:
                headers[name] = value.strip()
        error = _handshake_error(headers)
        if error is not None:
            status, text = error
            extra = b"Sec-WebSocket-Version: 13\r\n" if status == 426 else b""
            self._respond(status, text, extra)
            return
        self._start(request[1], headers[b"sec-websocket-key"])

    def _start(self, target: bytes, key: bytes) -> None:
        path = target.partition(b"?")[0].decode("latin-1")
        route = route_of(unquote(path) if "%" in path else path)
        if route is None:
            self._respond(404, "no WebSocket endpoint at this path")
            return
        assert self._app_state is not None
        ctx: EdgeContext | None = self._app_state.get("ctx")
        self._app_state = None
        if ctx is None:  # the lifespan has not started the edge (or has stopped it)
            self._respond(503, "the edge is not running")
            return
        # Answered here rather than from the connection's task: the client sends its auth frame
        # one loop iteration sooner, which is what a connection storm waits on.
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")
        self._state = OPEN
        self._schedule_ping()
        begin(self, ctx, *route)  # the connection's handler takes the auth frame as it is read
        if self._buf:  # sent without waiting for the answer
            self._parse()

    def _respond(self, status: int, text: str, extra: bytes = b"") -> None:
        body = text.encode() + b"\n"
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; "
                f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n").encode()
        self.transport.write(head + extra + b"\r\n" + body)
        self._state = CLOSING
        self._app_state = None
        self._buf = b""
        self._finish()

    # ---- HostSocket ------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, bool | None]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(coro))
        tasks: set[asyncio.Task[None]] = self._server_state.tasks  # uvicorn waits for them on shutdown
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def release_reader(self) -> bool:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._inbox or self._close_code is not None:
            return False
        self._waiter = None
        waiter.set_exception(Released())
        return True

    async def _run(self, coro: Coroutine[Any, Any, bool | None]) -> None:
        released = False
        try:
            released = bool(await coro)
        except Exception:  # top of the connection's task: log, and drop the socket below
            log.exception("socket_failed")
        finally:
            if not released and self._state < CLOSING:  # ended without a close frame out
                self.transport.abort()

    # ---- ClientSocket ----------------------------------------------------------------------

    @property
    def frames(self) -> FrameWriter:
        return self

    async def accept(self) -> None:
        return None  # the handshake was answered when it was read (_start)

    async def receive(self) -> str | bytes:
        inbox = self._inbox
        if inbox:
            message = inbox.pop(0)
            if self._read_paused:
                self._parse()
                if len(inbox) < INBOX_MAX and self._state < CLOSED:
                    self._read_paused = False
                    self.transport.resume_reading()
            return message
        if self._close_code is not None:
            raise Disconnected(self._close_code)
        waiter: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            if self._waiter is waiter:  # release_reader may have cleared it (and a new task set its own)
                self._waiter = None

    async def send_text(self, text: str) -> None:
        await self.wait_writable()
        if not self.open:
            raise Disconnected(self._close_code or 1006)
        self.write((text_frame(text.encode()),))

    async def close(self, code: int, reason: str = "") -> None:
        await self.wait_writable()  # the close frame goes behind what the socket still holds
        if self._state != OPEN or self.transport.is_closing():
            return
        self.transport.write(close_frame(code, reason))
        self._state = CLOSING
        self._disconnect(code)
        self._inbox = None  # unread messages are dropped; read on until the peer's close
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        self._set_timer(CLOSE_TIMEOUT_S, self.transport.abort)

    # ---- FrameWriter -----------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._state == OPEN and not self.transport.is_closing()

    @property
    def writable(self) -> bool:
        return not self._write_paused and self._state == OPEN and not self.transport.is_closing()

    async def wait_writable(self) -> None:
        if not self._write_paused or self._state == CLOSED:
            return
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drain)  # shared by the writer and close: one may be cancelled

    # ---- frames ----------------------------------------------------------------------------

    def _parse(self) -> None:
        """Handle the whole frames in the buffer, while the inbox has room."""
        buf = self._buf
        end = len(buf)
        pos = 0
        while end - pos >= 2:
            if self._inbox is not None and len(self._inbox) >= INBOX_MAX:
                if not self._read_paused:
                    self._read_paused = True
                    self.transport.pause_reading()
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = pos + 2
            if n == 126:
                if end - head < 2:
                    break
                n, head = int.from_bytes(buf[head:head + 2], "big"), head + 2
            elif n == 127:
                if end - head < 8:
                    break
                n, head = int.from_bytes(buf[head:head + 8], "big"), head + 8
            error = self._frame_error(b0, b1, n)
            if error is not None:
                self._fail(*error)
                return
            if end - head < 4 + n:
                break
            payload = unmask(buf[head + 4:head + 4 + n], buf[head:head + 4])
            pos = head + 4 + n
            self._frame(b0, payload)
            if self.transport.is_closing():
                self._buf = b""
                return
        self._buf = buf[pos:] if pos else buf

    def _frame_error(self, b0: int, b1: int, n: int) -> tuple[int, str] | None:
        opcode = b0 & 0x0F
        if b0 & 0x70:
            return 1002, "reserved bits set"
        if not b1 & 0x80:
            return 1002, "client frames must be masked"
        if opcode >= 8:
            if opcode > 10:
                return 1002, "reserved opcode"
            if n > 125 or not b0 & 0x80:
                return 1002, "control frames are short and not fragmented"
            return None
        if opcode > 2:
            return 1002, "reserved opcode"
        if (opcode == 0) == (self._frag is None):
            return 1002, "unexpected continuation frame" if opcode == 0 else "expected a continuation frame"
        if self._frag_size + n > self._config.ws_max_size:
            return int(CloseCode.MESSAGE_TOO_BIG), "message too big"
        return None

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode == 0x9:
            if self._state == OPEN:
                self.transport.write(bytes((0x8A, len(payload))) + payload)
        elif opcode == 0xA:
            self._pong_due = False
        elif opcode == 0x8:
            self._closed_by_peer(payload)
        elif fin and self._frag is None:
            self._message(opcode == 1, payload)
        elif self._frag is None:
            self._frag, self._frag_text, self._frag_size = [payload], opcode == 1, len(payload)
        else:
            self._frag.append(payload)
            self._frag_size += len(payload)
            if fin:
                text, data = self._frag_text, b"".join(self._frag)
                self._frag, self._frag_size = None, 0
                self._message(text, data)

    def _message(self, text: bool, data: bytes) -> None:
        if self._state != OPEN:
            return  # past our close frame: read on until the peer's, and drop the rest
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in a text message")
                return
        handler = self.handler
        if handler is not None and handler.on_message(message):
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(message)
        elif self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)

    def _closed_by_peer(self, payload: bytes) -> None:
        code = 1005  # no status code in the frame
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                code = 0
        if len(payload) == 1 or (len(payload) >= 2 and code not in VALID_CLOSE):
            self._fail(1002, "invalid close frame")
            return
        if self._state == OPEN:  # echo it, then close the TCP connection (the server's part)
            self.transport.write(close_frame(1000 if code == 1005 else code))
            self._state = CLOSING
        self._disconnect(code)
        self._finish()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): a close frame with the code, then close."""
        if self._state == OPEN:
            self.transport.write(close_frame(code, reason))
            self._state = CLOSING
        self._disconnect(code)
        self._buf = b""
        self._finish()

    def _disconnect(self, code: int) -> None:
        if self._close_code is not None:
            return
        self._close_code = code
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(Disconnected(code))
        if self.handler is not None:
            self.handler.on_disconnect()

    def _finish(self) -> None:
        """Close the transport once what it holds is sent; drop it if that takes too long."""
        self._set_timer(CLOSE_TIMEOUT_S, self.transport.abort)
        self.transport.close()

    def _wake_writers(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # ---- keepalive -------------------------------------------------------------------------

    def _set_timer(self, delay: float | None, callback: Any = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if delay is None else asyncio.get_running_loop().call_later(delay, callback)

    def _schedule_ping(self) -> None:
        interval = self._config.ws_ping_interval
        if interval:
            self._set_timer(interval, self._ping)

    def _ping(self) -> None:
        self._timer = None
        if not self.open:
            return
        self._pong_due = True
        self.transport.write(PING)
        self._set_timer(self._pong_timeout(), self._pong_check)
        if self.on_ping is not None:
            self.on_ping()

    def _pong_timeout(self) -> float:
        return float(self._config.ws_ping_timeout or self._config.ws_ping_interval or 0)

    def _pong_check(self) -> None:
        self._timer = None
        if not self._pong_due:  # answered: the next ping one interval after the last
            interval = float(self._config.ws_ping_interval or 0)
            self._set_timer(max(0.0, interval - self._pong_timeout()), self._ping)
        elif self.open:
            log.info("keepalive_timeout")
            self._fail(int(CloseCode.INTERNAL_ERROR), "keepalive ping timeout")


# A request line that starts like this is a WebSocket route's: EdgeHttpProtocol hands it to
# EdgeWebSocketProtocol at once, which parses the head itself.
WS_REQUESTS = tuple(f"GET {prefix}{base}".encode() for prefix in PREFIXES for base, _ in ROUTES)
SNIFF_MAX = max(len(r) for r in WS_REQUESTS)


class EdgeHttpProtocol(asyncio.Protocol):
    """uvicorn's `http` class for the edge. A connection whose first request is a GET on one of
    the WebSocket routes goes straight to the `ws` class (EdgeWebSocketProtocol); anything else
    is handed, bytes as received, to uvicorn's own HTTP protocol (which also upgrades a later
    request on a kept-alive connection through its `ws` class). This saves a WebSocket
    connection uvicorn's HTTP parsing, its scope, and the request head it would rebuild for the
    `ws` class: about a tenth of an edge's CPU in a connection storm."""

    __slots__ = ("_app_state", "_buf", "_config", "_loop", "_server_state", "transport")
    transport: asyncio.Transport

    def __init__(self, config: Config, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._config, self._server_state, self._app_state, self._loop = config, server_state, app_state, _loop
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)

    def shutdown(self) -> None:  # uvicorn is stopping before a request came
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        head = self._buf + data if self._buf else data
        config = self._config
        ws_class = config.ws_protocol_class  # this module's, unless configured otherwise
        if ws_class is not None and config.limit_concurrency is None and head.startswith(WS_REQUESTS):
            # the ws class parses the request head itself
            protocol: asyncio.Protocol = ws_class(  # type: ignore[call-arg]
                config=config, server_state=self._server_state, app_state=self._app_state)
        elif len(head) < SNIFF_MAX and any(r.startswith(head) for r in WS_REQUESTS):
            self._buf = head  # too short to tell yet
            return
        else:
            protocol = AutoHTTPProtocol(config=config, server_state=self._server_state,  # type: ignore[call-arg]
                                        app_state=self._app_state, _loop=self._loop)
        self._server_state.connections.discard(self)
        self._buf = b""
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(head)


def _handshake_error(headers: dict[bytes, bytes]) -> tuple[int, str] | None:
    """(status, text) when the headers are not a WebSocket opening handshake (section 4.2.1)."""
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        return 400, "Upgrade: websocket is required"
    if b"upgrade" not in (t.strip() for t in headers.get(b"connection", b"").lower().split(b",")):
        return 400, "Connection: Upgrade is required"
    version = headers.get(b"sec-websocket-version")
    if version is None:
        return 400, "Sec-WebSocket-Version is required"
    if version != b"13":
        return 426, "only WebSocket version 13 is supported"
    try:
        key = base64.b64decode(headers.get(b"sec-websocket-key", b""), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != 16:
        return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
    return None
