"""One WebSocket connection: authenticate, then a reader and a writer until either ends.

The reader handles client frames in order; the writer drains the bounded send queue. A full
queue closes the connection with 4008 (the client reconnects and recovers); nothing a client
sends can raise out of this module: bad input gets an error event or a close code.

On the edge's own server (`begin`) a connection has no task until it needs one: the auth frame
is checked as it is read, the reply is written when the router answers the attaches, and the
reader's task starts with the first message after it, a disconnect or a close. Refusals,
recovery in the auth frame and any other server (`serve`) take the task path from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn

import orjson
import structlog

from services.common import wire
from services.common.auth import AuthError, Principal, TokenVerifier, mint_token, normalize_channel, valid_id
from services.common.close_codes import CloseCode, reason_of
from services.common.history_client import HistoryCallError
from services.common.store.base import StoreError
from services.common.tasks import cancel_and_wait
from services.edge.catchup import ClientRecovery, RecoveryAnswer, RecoveryReason, StreamPosition
from services.edge.context import EdgeContext
from services.edge.demo_agent import AGENT_MENTION
from services.edge.domain import Event, HistoryPage
from services.edge.errors import EdgeError
from services.edge.hub import ChannelState, Wait
from services.edge.presence import tracked
from services.edge.ratelimit import TokenBucket
from services.edge.sendqueue import SendQueue, lane_of
from services.edge.wsproto import (
    CORK,
    ClientSocket,
    Disconnected,
    FrameWriter,
    HostSocket,
    Released,
    payload_of,
    text_frame,
)

log = structlog.get_logger("switchboard.edge")
Kind = Literal["chat", "agent_status"]
WRITE_BATCH = 256  # frames written in one transport write when a backlog drains
MAX_INFLIGHT_PUBLISHES = 64  # a connection's publishes queued or in flight
PUBLISH_UNIT_MAX = 32  # queued messages of one connection sent as one atomic, ordered unit
RECOVER_PAGE = 500


class _Dropped(Exception):
    """A frame refused by the rate limit after the client was already told once."""


class Closed(Exception):
    """Raised inside the session to close the socket with a code."""

    def __init__(self, code: CloseCode, reason: str = "") -> None:
        super().__init__(reason or reason_of(code))
        self.code = code


async def serve(ws: ClientSocket, ctx: EdgeContext, kind: Kind, path_id: str) -> None:
    """Serve one WebSocket of a route, whichever server carries it (the edge's own protocol in
    wsserver.py, or any ASGI server through asgisocket.py). A draining edge closes it with 1012."""
    if ctx.draining:
        await ws.accept()
        await ws.close(int(CloseCode.SERVICE_RESTART), reason_of(CloseCode.SERVICE_RESTART))
        return
    ctx.sockets += 1
    try:
        await Connection(ws, ctx, kind, path_id).run()
    finally:
        ctx.sockets -= 1


def begin(ws: HostSocket, ctx: EdgeContext, kind: Kind, path_id: str) -> None:
    """Start a connection on the edge's own server, whose handshake was just answered."""
    if ctx.draining or not valid_id(path_id):
        ws.spawn(serve(ws, ctx, kind, path_id))  # closed or refused at once, by the task path
        return
    Connection(ws, ctx, kind, path_id).begin(ws)


def warm_up(algorithm: str) -> None:
    """Parse an auth frame and check a token once, with a throwaway key, so that an edge's first
    connection does not pay their first-call costs (pydantic's about 1 ms, PyJWT's 0.1 ms): in a
    connection storm every connection of the first wave waits behind it."""
    wire.parse_auth(wire.load_json_object(b'{"token": "warm-up", "session_id": "warm-up"}'))
    if algorithm.startswith("HS"):  # a throwaway key signs for the HMAC algorithms only
        key = secrets.token_hex(32)
        TokenVerifier(key, algorithm, cache_size=0).verify(mint_token(key, "warm-up", ttl_s=60,
                                                                      algorithm=algorithm))


# How a connection runs: waiting for its auth frame, then for its channels' attaches, then
# live with no task (IDLE); or on a task of its own (TASK: from the start under `serve`).
AUTH, ATTACH, IDLE, TASK = range(4)
# A heartbeat frame longer than this is left to the connection's task (TripSage's is about 40).
BEAT_MAX_CHARS = 512


class _Refused(Exception):
    """An auth frame turned down: the error and code of the reply, and the close code."""

    def __init__(self, error: str, code: str, close: CloseCode) -> None:
        super().__init__(error)
        self.error, self.code, self.close = error, code, close


class Connection:
    def __init__(self, ws: ClientSocket, ctx: EdgeContext, kind: Kind, path_id: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.kind = kind
        self.path_id = path_id
        self.connection_id = wire.new_id()  # 32 hex digits, unique across processes
        self.principal: Principal | None = None
        self.session_id: str | None = None
        self.channels: set[str] = set()
        self.offsets: dict[str, int] = {}   # channel -> last offset queued to this client
        self.queue: SendQueue[bytes] = SendQueue(ctx.settings.send_queue_max)
        # Prepared frames go straight to the transport (see wsproto.py); None: through send_text.
        self._frames: FrameWriter | None = ws.frames
        self._direct = False  # set once the auth reply is out: frames may bypass the queue
        self._closing: CloseCode | None = None
        # The connection's own task runs the reader. A writer task exists only once something
        # had to be queued (most connections never queue: frames go straight to the socket).
        self._main: asyncio.Task[Any] | None = None
        self._stopping = False  # _stop() cancelled _main: end normally, with _closing's code
        self._live = False  # authenticated and not tearing down: a writer may run
        self._writer: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_PUBLISHES)
        self._outbox: deque[tuple[str, Event]] | None = None  # durable publishes, in send order
        self._sender: asyncio.Task[None] | None = None
        # channel -> live frames held while the channel's missed events are replayed
        self._recovering: dict[str, list[tuple[bytes, int, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bucket = TokenBucket(ctx.settings.client_rate_per_s, ctx.settings.client_burst)
        self._refused = 0  # frames refused by the rate limit since the last accepted one
        self._present: set[str] = set()  # session channels this connection counts in presence
        self._phase = TASK
        self._host: HostSocket | None = None  # the server that runs the task (begin())
        self._timer: asyncio.TimerHandle | None = None  # the auth frame's deadline (AUTH)
        self._cancel_wait: Callable[[], object] | None = None  # the attaches' wait (ATTACH)
        self._unread = False  # a message came during ATTACH: the task starts at once after it
        self._reading = False  # the task waits in _read_loop for a message (it may be let go)

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """The connection's whole life, on the caller's task (any server)."""
        await self.ws.accept()
        self.ctx.metrics.accepted[self.kind].inc()
        await self._serve(self._authenticate)

    async def _serve(self, authenticate: Callable[[], Awaitable[None]] | None) -> bool:
        """Authenticate (unless done already), read until the end, then tear down. True: the
        task was let go while the connection lives on without it (`_rest`)."""
        code = CloseCode.NORMAL
        self._main = asyncio.current_task()
        released = False
        try:
            if authenticate is not None:
                await authenticate()
                self._went_live()
            structlog.contextvars.bind_contextvars(connection_id=self.connection_id)
            if self._closing is None:
                released = await self._read_loop()
            code = self._closing or CloseCode.NORMAL
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # cancelled from outside: the server is going away
            assert self._main is not None
            self._main.uncancel()
            code = self._closing or CloseCode.NORMAL
        except Closed as e:
            code = e.code
        except Disconnected:
            code = CloseCode.NORMAL
        except Exception:
            log.exception("session_failed")
            code = CloseCode.INTERNAL_ERROR
        finally:
            if not released:
                self._main = None  # nothing stops the teardown
                self._live = False
                await self._teardown(code)
        return released

    def _went_live(self) -> None:
        m = self.ctx.metrics
        self._live = True  # a queued frame may start the writer: nothing overtook the reply
        self._start_writer()
        m.auth_ok.inc()
        self.ctx.connections.add(self)
        m.connected(len(self.ctx.connections))

    # ---- without a task (begin) ------------------------------------------------------------

    def begin(self, host: HostSocket) -> None:
        """Wait for the auth frame without a task (its handshake was answered)."""
        self.ctx.sockets += 1
        self.ctx.metrics.accepted[self.kind].inc()
        self._host, self._phase = host, AUTH
        host.handler = self
        host.on_ping = self._rest
        self._timer = asyncio.get_running_loop().call_later(self.ctx.settings.auth_timeout_s,
                                                            self._auth_deadline)

    def on_message(self, message: str | bytes) -> bool:
        """MessageHandler: the auth frame is handled here; later messages start the task."""
        if self._phase == AUTH:
            try:
                if self._auth_now(message):
                    return True
            except Exception:  # as a task's would: logged, and closed with 1011
                log.exception("session_failed", connection_id=self.connection_id)
                self._closing = CloseCode.INTERNAL_ERROR
                self._go(None)
                return True
            self._go(self._authenticate)  # refusals and recovery: the task reads this message
        elif self._phase == ATTACH:
            self._unread = True
        elif self._phase == IDLE:
            if self._beat_now(message):
                return True
            self._go(None)
        return False

    def _beat_now(self, raw: str | bytes) -> bool:
        """Answer a heartbeat read while idle, as `_handle` would: a client that listens and
        beats (the TypeScript client, every 20 s) keeps no task. False leaves the message to a
        task: anything else, or a heartbeat over the rate limit (refused there)."""
        if not isinstance(raw, str) or len(raw) > min(BEAT_MAX_CHARS, self.ctx.settings.max_frame_bytes):
            return False
        if '"heartbeat"' not in raw and '"ping"' not in raw:  # other messages are decoded once, by the task
            return False
        try:
            frame = wire.parse_frame(wire.load_json_object(raw))
        except wire.ProtocolError:
            return False
        if not isinstance(frame, wire.HeartbeatFrame) or not self._allowed():
            return False
        m = self.ctx.metrics
        m.bytes_in.inc(len(raw))
        m.messages_in.labels(frame.type).inc()
        self._heartbeat()
        return True

    def on_disconnect(self) -> None:
        if self._phase == AUTH:
            self._go(self._authenticate)  # it reads the disconnect and tears down
        elif self._phase in (ATTACH, IDLE):
            self._go(None)

    def _go(self, authenticate: Callable[[], Awaitable[None]] | None) -> None:
        """From now on the connection runs on a task of its own, as under `serve`."""
        assert self._host is not None
        self._phase = TASK
        self._host.handler = None
        self._end_deadline()
        if self._cancel_wait is not None:
            self._cancel_wait()
            self._cancel_wait = None
        self._host.spawn(self._serve_spawned(authenticate))

    async def _serve_spawned(self, authenticate: Callable[[], Awaitable[None]] | None) -> bool:
        released = False
        try:
            released = await self._serve(authenticate)
        finally:
            if not released:
                self.ctx.sockets -= 1
        return released

    def _rest(self) -> None:
        """At a keepalive ping (HostSocket.on_ping): a connection whose task waits for a message
        lets the task go and waits without one again, as before its first message, so a client
        that spoke once (a chat user) does not keep a task for good. A busy connection is not
        slowed: this happens at most once per ping interval."""
        host = self._host
        if (self._phase != TASK or host is None or not self._reading or self._stopping
                or self._closing is not None or self._recovering):
            return
        if host.release_reader():  # the task ends at its next step, with nothing else to do
            self._reading = False
            self._main = None
            self._phase = IDLE
            host.handler = self

    def _auth_deadline(self) -> None:
        self._timer = None
        if self._phase == AUTH:
            self._go(self._auth_timed_out)

    def _end_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _auth_now(self, raw: str | bytes) -> bool:
        """Accept an auth frame as it is read; False leaves it to the task (refusals, recovery)."""
        try:
            frame, principal = self._check_auth(raw)
        except _Refused:
            return False
        if frame.recover or self._frames is None:
            return False
        self.ctx.metrics.bytes_in.inc(len(raw))
        self._admit(principal)
        available, names = self._auth_channels(frame)
        ok, failed, new, waits = self._subscribe_nowait(names)

        def attached() -> None:
            self._cancel_wait = None
            if self._phase != ATTACH:
                return  # closed meanwhile: its task tears down
            try:
                self._subscribed(new)
                self._reply(available, ok, failed, {})
                self._went_live()
            except Exception:
                log.exception("session_failed", connection_id=self.connection_id)
                self._closing = CloseCode.INTERNAL_ERROR
                self._go(None)
                return
            self._phase = IDLE
            if self._unread:
                self._go(None)

        self._phase = ATTACH
        self._end_deadline()
        if waits:
            self._cancel_wait = self.ctx.hub.when_attached(waits, attached)
        else:
            attached()
        return True

    async def _teardown(self, code: CloseCode) -> None:
        self._presence_leave(list(self._present))
        self.ctx.hub.unsubscribe(self, self.channels)
        self.ctx.connections.discard(self)
        self.ctx.metrics.connected(len(self.ctx.connections))
        for task in list(self._tasks):
            await cancel_and_wait(task)
        if code != CloseCode.NORMAL or self._closing is not None:
            self.ctx.metrics.closes.labels(str(int(code))).inc()
        # The close frame waits behind what the socket still holds: a client that resumes
        # reading within the grace gets the code (4008 for a slow consumer); one that never
        # reads again has its TCP connection dropped when the grace runs out (it sees 1006).
        try:
            async with asyncio.timeout(self.ctx.settings.drain_grace_s):
                await self.ws.close(int(code), reason_of(code))
        except TimeoutError:
            log.info("close_frame_not_sent", code=int(code), reason="client did not read",
                     buffered_bytes=self._frames.buffered if self._frames else None)
        except Exception as e:  # the socket is already gone
            log.debug("close_failed", code=int(code), error=repr(e))
        structlog.contextvars.unbind_contextvars("connection_id")

    def close_with(self, code: CloseCode) -> None:
        """Close from outside the reader (overflow, drain): stop reading; run() closes with
        `code` (what is still queued is dropped; the close frame follows what the socket holds)."""
        if self._closing is None:
            self._closing = code
        self._stop()

    def _stop(self) -> None:
        """End the reading (the task then tears down), unless it is already tearing down."""
        if self._main is not None and not self._stopping:
            self._stopping = True
            self._main.cancel()
        elif self._phase in (ATTACH, IDLE):
            self._go(None)  # no task yet: one starts, and closes with _closing's code

    # ---- auth ------------------------------------------------------------------------------

    async def _authenticate(self) -> None:
        if not valid_id(self.path_id):
            await self._auth_failed("invalid id in path", "invalid_id", CloseCode.FORBIDDEN)
        try:
            async with asyncio.timeout(self.ctx.settings.auth_timeout_s):
                raw = await self.ws.receive()
        except TimeoutError:
            await self._auth_timed_out()
        self.ctx.metrics.bytes_in.inc(len(raw))
        try:
            frame, principal = self._check_auth(raw)
        except _Refused as r:
            await self._auth_failed(r.error, r.code, r.close)
        self._admit(principal)
        available, names = self._auth_channels(frame)
        # Recovered channels first: their live frames must be held before any can arrive.
        recovery = await self._begin_recovery(frame.recover) if frame.recover else {}
        ok, failed = await self._subscribe(names)
        if self._frames is None:
            reply, established = self._auth_reply(available, ok, failed, recovery)
            await self._send_now(orjson.dumps(reply).decode())
            self._start_replays(recovery)
            self._push_event("connection_established", established, clean=True)
            self._authenticated()
        else:
            self._reply(available, ok, failed, recovery)

    async def _auth_timed_out(self) -> NoReturn:
        await self._auth_failed("authentication timeout", "auth_timeout", CloseCode.BAD_AUTH_FRAME)

    def _check_auth(self, raw: str | bytes) -> tuple[wire.AuthFrame, Principal]:
        """The auth frame and its principal, allowed on this path; raises _Refused."""
        try:
            frame = wire.parse_auth(wire.load_json_object(raw))
        except wire.ProtocolError as e:
            raise _Refused(str(e), e.code, CloseCode.BAD_AUTH_FRAME) from e
        try:
            principal = self.ctx.verifier.verify(frame.token)
        except AuthError as e:
            raise _Refused(str(e), e.code, CloseCode.AUTH_FAILED) from e
        if self.kind == "chat":
            if (frame.session_id and frame.session_id != self.path_id) or not principal.may_join(self.path_id):
                raise _Refused("not allowed to join this session", "forbidden", CloseCode.FORBIDDEN)
        elif principal.user_id != self.path_id:
            raise _Refused("not allowed to watch this user", "forbidden", CloseCode.FORBIDDEN)
        return frame, principal

    def _admit(self, principal: Principal) -> None:
        self.principal = principal
        if self.kind == "chat":
            self.session_id = self.path_id

    async def _auth_failed(self, error: str, code: str, close: CloseCode) -> NoReturn:
        self.ctx.metrics.auth.labels(code).inc()
        reply = {"success": False, "error": error, "code": code, "connection_id": self.connection_id}
        with contextlib.suppress(Exception):
            await self._send_now(wire.encode(reply).decode())
        raise Closed(close, error)

    def _auth_channels(self, frame: wire.AuthFrame) -> tuple[list[str], list[str]]:
        """(the channels this connection may subscribe, those it asks for or gets by default)."""
        p = self.principal
        assert p is not None
        available = [f"user:{p.user_id}", f"agent_status:{p.user_id}"]
        if self.session_id:
            available.insert(0, f"session:{self.session_id}")
        default = [available[0], f"user:{p.user_id}"] if self.kind == "chat" else available[1::-1]
        return available, [*default, *frame.channels]

    def _auth_reply(self, available: list[str], ok: list[str], failed: list[str],
                    recovery: dict[str, ClientRecovery]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The auth reply and connection_established's payload."""
        # Both built without None values (never sent: the keys are left out), so encoded as
        # they are; snake_case and the camelCase of TripSage's documentation.
        assert self.principal is not None
        cid, uid, sid = self.connection_id, self.principal.user_id, self.session_id
        reply: dict[str, Any] = {"success": True, "connection_id": cid, "user_id": uid}
        if sid:
            reply["session_id"] = sid
        reply["available_channels"] = available
        reply["subscribed_channels"] = ok
        if failed:
            reply["failed_channels"] = failed
        reply["connectionId"], reply["userId"] = cid, uid
        if sid:
            reply["sessionId"] = sid
        if answers := _answers(recovery):
            reply["recovered"] = answers
        established: dict[str, Any] = {"connection_id": cid, "user_id": uid}
        if sid:
            established["session_id"] = sid
        established["channels"] = sorted(self.channels)
        return reply, established

    def _reply(self, available: list[str], ok: list[str], failed: list[str],
               recovery: dict[str, ClientRecovery]) -> None:
        """Write the auth reply and connection_established straight to the transport."""
        assert self._frames is not None
        reply, established = self._auth_reply(available, ok, failed, recovery)
        first = text_frame(orjson.dumps(reply))
        with CORK:  # the reply and connection_established leave in one write
            self._frames.write((first,))
            self._count_out(first, 0, 0.0)
            self._direct = True  # nothing may overtake the auth reply
            self._start_replays(recovery)
            self._push_event("connection_established", established, clean=True)
        self._authenticated()

    def _authenticated(self) -> None:
        assert self.principal is not None
        log.info("session_authenticated", user_id=self.principal.user_id, session_id=self.session_id,
                 kind=self.kind, connection_id=self.connection_id)

    # ---- reading ---------------------------------------------------------------------------

    async def _read_loop(self) -> bool:
        """Handle messages until the socket is closed (False) or `_rest` lets the task go (True)."""
        while True:
            self._reading = True
            try:
                text = await self.ws.receive()
            except Disconnected:
                return False
            except Released:
                return True  # _rest has moved the connection on (a new task may be running)
            self._reading = False
            if isinstance(text, bytes):
                self.ctx.metrics.bytes_in.inc(len(text))
                self._error("binary frames are not supported; send JSON text", "unsupported_data")
                continue
            self.ctx.metrics.bytes_in.inc(len(text))
            if len(text) > self.ctx.settings.max_frame_bytes:
                raise Closed(CloseCode.MESSAGE_TOO_BIG)
            try:
                await self._handle(wire.load_json_object(text), nested=False)
            except _Dropped:
                continue
            except wire.ProtocolError as e:
                self.ctx.metrics.messages_in.labels("invalid").inc()
                self._error(str(e), e.code)

    async def _handle(self, obj: dict[str, Any], *, nested: bool) -> None:
        self._rate_limit()
        frame = wire.parse_frame(obj)
        self.ctx.metrics.messages_in.labels(frame.type).inc()
        match frame:
            case wire.ChatMessageFrame():
                await self._chat_message(frame)
            case wire.TypingFrame():
                await self._typing(frame)
            case wire.SubscribeFrame():
                await self._on_subscribe(frame)
            case wire.HeartbeatFrame():
                self._heartbeat()
            case wire.BatchFrame():
                if nested:
                    raise wire.ProtocolError("a batch cannot contain a batch")
                for item in frame.messages:
                    try:
                        await self._handle(item, nested=True)
                    except _Dropped:
                        continue
                    except wire.ProtocolError as e:
                        self.ctx.metrics.messages_in.labels("invalid").inc()
                        self._error(str(e), e.code)
            case wire.HistoryFrame():
                await self._history(frame)  # inline: one read at a time per connection
            case wire.RecoverFrame():
                await self._recover(frame.channels)
            case wire.PresenceFrame():
                await self._presence_query(frame)

    def _heartbeat(self) -> None:
        self._push_event("connection_heartbeat", {"connection_id": self.connection_id, "timestamp": wire.now_iso()})

    def _allowed(self) -> bool:
        """Take one message's allowance (a streak of refusals ends); False when none is left."""
        if not self._bucket.take():
            return False
        self._refused = 0
        return True

    def _rate_limit(self) -> None:
        """Refuse a message over the allowance with an error event; a client that keeps sending
        through a whole burst's worth of refusals is closed with 4029 (it reconnects later)."""
        if self._allowed():
            return
        self._refused += 1
        self.ctx.metrics.rate_limited.inc()
        if self._refused > self.ctx.settings.client_burst:
            raise Closed(CloseCode.RATE_LIMITED)
        if self._refused == 1:
            raise wire.ProtocolError("rate limit exceeded: message dropped", "rate_limited")
        raise _Dropped

    def _target_channel(self, requested: str | None) -> str:
        channel = normalize_channel(requested) if requested else (
            f"session:{self.session_id}" if self.session_id else None)
        if channel is None or not channel.startswith("session:"):
            raise wire.ProtocolError("messages go to a session channel", "invalid_channel")
        assert self.principal is not None
        if not self.principal.may_access(channel):
            raise wire.ProtocolError(f"not allowed to publish to {channel}", "forbidden")
        return channel

    async def _chat_message(self, frame: wire.ChatMessageFrame) -> None:
        channel = self._target_channel(frame.channel)
        payload: dict[str, Any] = {"content": frame.content, "role": "user"}
        if frame.attachments:
            payload["attachments"] = frame.attachments
        await self._publish(channel, "chat_message", payload, frame.id, ephemeral=False)
        if self.ctx.agent is not None and AGENT_MENTION in frame.content:
            self.ctx.agent.trigger(channel, frame.content)

    async def _typing(self, frame: wire.TypingFrame) -> None:
        channel = self._target_channel(frame.channel)
        assert self.principal is not None
        typing = frame.type != "chat_typing_stop" and frame.is_typing is not False
        payload = {"user_id": self.principal.user_id, "is_typing": typing}
        await self._publish(channel, frame.type, payload, None, ephemeral=True)

    async def _publish(self, channel: str, event_type: str, payload: dict[str, Any],
                       event_id: str | None, *, ephemeral: bool) -> None:
        assert self.principal is not None
        accepted_us = time.time_ns() // 1000  # the frame was just read: the latencies start here
        eid = event_id or wire.new_id()
        body = wire.encode_body(event_type, payload, event_id=eid, channel=channel,
                                session_id=channel.partition(":")[2],
                                user_id=self.principal.user_id)
        event = Event(id=eid, type=event_type, body=body, priority=wire.priority_of(event_type),
                      accepted_us=accepted_us)
        # Bounded publishes per connection: the reader waits here when the bound is reached,
        # which is back-pressure on a flooding client instead of unbounded tasks.
        await self._inflight.acquire()
        if ephemeral:  # typing indicators: no order, no retry
            self._spawn(self._await_publish(channel, [event], ephemeral))
            return
        if self._outbox is None:
            self._outbox = deque()  # made on the first publish: many connections only listen
        self._outbox.append((channel, event))
        if self._sender is None:
            self._sender = self._spawn(self._send_in_order())

    async def _send_in_order(self) -> None:
        """A connection's durable publishes leave in the order the client sent them, one unit
        in flight at a time: what queued meanwhile for the same channel goes as the next unit,
        which history stores whole or not at all. A unit being retried (same ids) is never
        overtaken by a later one, so one connection's messages are stored in order, retries
        included, without waiting a round trip per message."""
        try:
            while self._outbox:
                channel = self._outbox[0][0]
                unit: list[Event] = []
                while self._outbox and self._outbox[0][0] == channel and len(unit) < PUBLISH_UNIT_MAX:
                    unit.append(self._outbox.popleft()[1])
                await self._await_publish(channel, unit, ephemeral=False)
        finally:
            self._sender = None

    async def _await_publish(self, channel: str, events: list[Event], ephemeral: bool) -> None:
        m = self.ctx.metrics
        try:
            await self.ctx.pool.publish(channel, events[0], ephemeral=ephemeral, more=events[1:])
            m.client_publishes_ok.inc(len(events))
        except EdgeError as e:
            m.publishes.labels("client", e.code).inc(len(events))
            if not ephemeral:
                for event in events:
                    self._push_event("connection_error", {
                        "code": e.code, "message": f"message not acknowledged: {e}",
                        "message_id": event.id, "retryable": e.retryable})
        finally:  # timed from when the edge read each frame, not from when its unit left
            now_us = time.time_ns() // 1000
            for event in events:
                m.publish_seconds.observe(max(0, now_us - event.accepted_us) / 1e6)
                self._inflight.release()

    async def _on_subscribe(self, frame: wire.SubscribeFrame) -> None:
        unsubscribed = []
        for name in frame.unsubscribe_channels:
            channel = normalize_channel(name)
            if channel in self.channels:
                self.channels.discard(channel)
                self.offsets.pop(channel, None)
                self.ctx.hub.unsubscribe(self, [channel])
                self._presence_leave([channel])
                unsubscribed.append(name)
        ok, failed = await self._subscribe(frame.channels)
        self._push_event("subscribe_response", {
            "success": not failed, "subscribed_channels": ok, "failed_channels": failed,
            "unsubscribed_channels": unsubscribed, "channels": sorted(self.channels)})

    async def _subscribe(self, names: list[str]) -> tuple[list[str], list[str]]:
        """Subscribe the channels this principal may read; returns (subscribed, failed) names.
        Returns once every new subscription is attached upstream (live)."""
        ok, failed, new, waits = self._subscribe_nowait(names)
        if waits:
            await self.ctx.hub.wait_attached(waits)
        self._subscribed(new)
        return ok, failed

    def _subscribe_nowait(
        self, names: list[str],
    ) -> tuple[list[str], list[str], list[tuple[str, ChannelState]], list[Wait]]:
        """`_subscribe` up to the attaches' wait: (subscribed, failed, new channels, waits)."""
        assert self.principal is not None
        ok: list[str] = []
        failed: list[str] = []
        new: list[str] = []
        for name in names:
            channel = normalize_channel(name)
            if channel is None or not self.principal.may_access(channel):
                failed.append(name)
                continue
            if channel not in self.channels:
                self.channels.add(channel)
                new.append(channel)
            if channel not in ok:
                ok.append(channel)
        if not new:
            return ok, failed, [], []
        states, waits = self.ctx.hub.subscribe_nowait(self, new)
        return ok, failed, list(zip(new, states, strict=True)), waits

    def _subscribed(self, new: list[tuple[str, ChannelState]]) -> None:
        """The new channels are live (or given up on): positions and presence."""
        for channel, state in new:
            self.offsets.setdefault(channel, state.sync.offset)
        self._presence_join([channel for channel, _ in new])

    async def _history(self, frame: wire.HistoryFrame) -> None:
        channel = normalize_channel(frame.channel)
        assert self.principal is not None
        if channel is None or not self.principal.may_access(channel):
            self._error(f"not allowed to read {frame.channel}", "forbidden")
            return
        try:
            got = await self.ctx.history.read(channel, frame.since or 0, limit=frame.limit,
                                              latest=frame.since is None)
        except HistoryCallError as e:
            self._error(f"history unavailable: {e}", e.code)
            return
        self.push(text_frame(history_frame(channel, got)), 1, channel, 0)

    # ---- presence --------------------------------------------------------------------------

    def _presence_join(self, channels: list[str]) -> None:
        tracker, p = self.ctx.presence, self.principal
        if tracker is None or p is None:
            return
        for channel in channels:
            if tracked(channel) and channel in self.channels and channel not in self._present:
                self._present.add(channel)
                tracker.add(channel, p.user_id)

    def _presence_leave(self, channels: list[str]) -> None:
        tracker, p = self.ctx.presence, self.principal
        if tracker is None or p is None:
            return
        for channel in channels:
            if channel in self._present:
                self._present.discard(channel)
                tracker.remove(channel, p.user_id)

    async def _presence_query(self, frame: wire.PresenceFrame) -> None:
        channel = normalize_channel(frame.channel)
        assert self.principal is not None
        if channel is None or not self.principal.may_access(channel):
            self._request_error("forbidden", f"not allowed to read {frame.channel}", frame.channel)
            return
        if self.ctx.presence is None:
            self._error("presence is not available on this server", "unsupported")
            return
        try:
            users = await self.ctx.presence.users(channel)
        except (StoreError, TimeoutError) as e:
            self._request_error("unavailable", f"presence unavailable: {e}", channel)
            return
        self._push_event("presence_response", presence_payload(channel, users))

    def _request_error(self, code: str, message: str, channel: str) -> None:
        """An error answering a presence query: names the channel, so a client can match it."""
        self.ctx.metrics.errors.labels(code).inc()
        self._push_event("error", {"code": code, "message": message, "channel": channel,
                                   "request": "presence"})

    # ---- recovery --------------------------------------------------------------------------

    async def _recover(self, positions: dict[str, wire.RecoverPosition]) -> None:
        recovery = await self._begin_recovery(positions)
        self._push_event("recover_response", {"channels": _answers(recovery)})
        self._start_replays(recovery)

    async def _begin_recovery(
        self, positions: dict[str, wire.RecoverPosition],
    ) -> dict[str, ClientRecovery]:
        """Subscribe each channel with its live frames held back, and read the first page of
        what the client missed: that tells whether history still covers it."""
        assert self.principal is not None
        out: dict[str, ClientRecovery] = {}
        for name, pos in positions.items():
            channel = normalize_channel(name)
            r = out[name] = ClientRecovery(channel or name, StreamPosition(pos.offset, pos.epoch))
            if channel is None or not self.principal.may_access(channel):
                r.answer = RecoveryAnswer(False, RecoveryReason.FORBIDDEN)
            elif channel in self._recovering:
                r.answer = RecoveryAnswer(False, RecoveryReason.IN_PROGRESS)
            else:
                self._recovering[channel] = []  # before subscribing: hold live frames
        live = [r for r in out.values() if r.answer is None]
        await self._subscribe([r.channel for r in live])
        for r in live:
            self.offsets[r.channel] = r.since.offset
        await asyncio.gather(*(self._first_page(r) for r in live))
        for r in out.values():
            assert r.answer is not None
            self.ctx.metrics.recoveries.labels(r.answer.outcome).inc()
        return out

    async def _first_page(self, r: ClientRecovery) -> None:
        try:
            page = await self.ctx.history.read(r.channel, r.since.offset, epoch=r.since.epoch,
                                               limit=RECOVER_PAGE)
        except HistoryCallError as e:
            r.failed(e.code)
            return
        if not r.first_page(page):
            self.offsets[r.channel] = 0  # the client's position means nothing now: go on live

    def _start_replays(self, recovery: dict[str, ClientRecovery]) -> None:
        for r in recovery.values():
            if r.replays:
                self._spawn(self._replay(r))

    async def _replay(self, r: ClientRecovery) -> None:
        """Send the missed events in order, paced by the send queue, then the live frames held
        meanwhile (duplicates at the seam are dropped by offset)."""
        try:
            while r.page:
                for ev in r.page:
                    await self.queue.wait_room()
                    self._replay_one(text_frame(ev.frame), ev.priority, r.channel, ev.offset)
                since = r.next_read()
                if since is None:
                    break
                r.next_page(await self.ctx.history.read(r.channel, since, limit=RECOVER_PAGE))
        except HistoryCallError as e:
            log.warning("replay_failed", channel=r.channel, error=str(e))
        finally:
            held = self._recovering.pop(r.channel, [])
            for frame, priority, offset in held:
                self._replay_one(frame, priority, r.channel, offset)

    def _replay_one(self, frame: bytes, priority: int, channel: str, offset: int) -> None:
        if self._deliver(frame, priority, channel, offset):
            self._count_out(frame, lane_of(priority, offset), 0.0)

    # ---- writing ---------------------------------------------------------------------------

    def push(self, frame: bytes, priority: int, channel: str, offset: int,
             accepted: float = 0.0) -> None:
        """Send or queue a prepared frame of this connection's own (a reply, an event), counted."""
        if self.offer(frame, priority, channel, offset, accepted):
            self._count_out(frame, lane_of(priority, offset), accepted)

    def offer(self, frame: bytes, priority: int, channel: str, offset: int,
              accepted: float = 0.0) -> bool:
        """Send or queue a prepared frame (Subscriber protocol). Drops what this client already
        has; a full queue closes the connection with 4008. True: written to the socket now and
        not counted yet (the hub counts a fan-out's frames at once); queued frames are counted
        by the writer."""
        if offset and channel in self._recovering:
            held = self._recovering[channel]
            if len(held) >= self.queue.max_items:
                self._overflow()
                return False
            held.append((frame, priority, offset))
            return False
        return self._deliver(frame, priority, channel, offset, accepted)

    def _deliver(self, frame: bytes, priority: int, channel: str, offset: int,
                 accepted: float = 0.0) -> bool:
        """True: written now, not counted (the caller counts it)."""
        if offset:
            if offset <= self.offsets.get(channel, 0):
                return False
            self.offsets[channel] = offset
        # Nothing queued and the socket takes data: write now, in this loop iteration, with no
        # task switch. Otherwise queue it (lanes, bound, 4008) for the writer task.
        frames = self._frames
        if self._direct and frames is not None and not self.queue.size and frames.writable:
            frames.write_one(frame)
            return True
        if not self.queue.push(frame, priority, durable=offset > 0, accepted=accepted):
            self._overflow()
        else:
            self._start_writer()
        return False

    def _count_out(self, frame: bytes, lane: int, accepted: float) -> None:
        self.ctx.metrics.written(lane, len(frame), 1, accepted)

    def _overflow(self) -> None:
        if self._closing is None:
            self.ctx.metrics.queue_overflows.inc()
            log.warning("send_queue_overflow", queued=len(self.queue))
        self.close_with(CloseCode.SLOW_CONSUMER)

    def _push_event(self, event_type: str, payload: dict[str, Any], *, clean: bool = False) -> None:
        body = wire.encode_body(event_type, payload, session_id=self.session_id,
                                user_id=self.principal.user_id if self.principal else None, clean=clean)
        self.push(text_frame(body), wire.priority_of(event_type), "", 0)

    def _error(self, message: str, code: str) -> None:
        self.ctx.metrics.errors.labels(code).inc()
        self._push_event("error", {"code": code, "message": message})

    def _start_writer(self) -> None:
        """The writer task, once something is queued and the connection is live."""
        if self._writer is None and self._live and self.queue:
            self._writer = self._spawn(self._write_loop())

    async def _write_loop(self) -> None:
        """Drain what could not be written at once (before the auth reply, or while the socket
        was full): whole batches in one transport write, as soon as the socket takes data.
        Started by the first frame queued; it ends the connection when it ends."""
        try:
            while True:
                await self.queue.wait_ready()
                if self._frames is None:
                    frame, lane, accepted = await self.queue.pop()
                    await self.ws.send_text(payload_of(frame).decode())
                    self._count_out(frame, lane, accepted)
                    continue
                await self._frames.wait_writable()
                if not self._frames.open:
                    break  # closed under us
                batch = self.queue.pop_many(WRITE_BATCH)
                self._frames.write([frame for frame, _, _ in batch])
                for frame, lane, accepted in batch:
                    self._count_out(frame, lane, accepted)
        except (Disconnected, OSError):
            pass  # the socket is gone
        except Exception:
            log.exception("session_failed")
            if self._closing is None:
                self._closing = CloseCode.INTERNAL_ERROR
        self._stop()

    async def _send_now(self, text: str) -> None:
        """Before the connection is live (auth replies)."""
        await self.ws.send_text(text)
        self.ctx.metrics.frames_out[0] += 1
        self.ctx.metrics.bytes_out[0] += len(text)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _answers(recovery: dict[str, ClientRecovery]) -> dict[str, dict[str, Any]]:
    return {name: r.answer.to_wire() for name, r in recovery.items() if r.answer is not None}


def presence_payload(channel: str, users: dict[str, int]) -> dict[str, Any]:
    return {"channel": channel, "count": len(users),
            "users": [{"user_id": u, "connections": n} for u, n in sorted(users.items())]}


def history_frame(channel: str, got: HistoryPage) -> bytes:
    """A history_response event whose events are the stored frames, embedded without re-encoding."""
    body = wire.encode_body("history_response", {
        "channel": channel, "epoch": got.epoch, "top_offset": got.top_offset,
        "first_offset": got.first_offset, "complete": got.complete, "events": [],
    }, channel=channel)
    events = b",".join(ev.frame for ev in got.events)
    return body.replace(b'"events":[]', b'"events":[' + events + b"]", 1)
