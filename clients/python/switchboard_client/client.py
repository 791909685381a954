"""An asyncio WebSocket client: auth, reconnect with full-jitter backoff, recovery, presence.

The client remembers the last `{offset, epoch}` it received per channel and sends them in the
auth frame of every reconnect (`recover`), so the edge replays what was missed; an event at or
below the remembered offset of its epoch is a duplicate and is dropped. Channels the server
could not recover are reported in `unrecovered` (the application should reload them).

Sends are queued (bounded) while disconnected and flushed in order after the reconnect. Every
chat message carries an `id`; one sent but not yet seen back on the channel is sent again after
a reconnect, and the server stores a retried id once. No reconnect after 1000, 4001 or 4003.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from switchboard_client.close_codes import should_reconnect


class ClientClosedError(Exception):
    """The client stopped for good: closed by the application, or a terminal close code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SendQueueFullError(Exception):
    """More than `send_queue_max` messages are waiting for a connection or for their echo."""


class PresenceError(Exception):
    """The server refused a presence query (`code`: forbidden, unavailable)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class SwitchboardClient:
    def __init__(
        self, url: str | list[str], token: str, *, session_id: str | None = None,
        channels: list[str] | None = None, reconnect: bool = True, recover: bool = True,
        backoff_base_s: float = 0.1, backoff_max_s: float = 5.0, open_timeout_s: float = 10.0,
        queue_max: int = 1_000_000, send_queue_max: int = 1_000,
    ) -> None:
        # Several URLs (edges) are tried in turn on reconnect; behind a load balancer, give one.
        self.urls = [url] if isinstance(url, str) else list(url)
        self._url_index = 0
        self.token = token
        self.session_id = session_id
        self.channels = list(channels or [])
        self.reconnect = reconnect
        self.recover = recover
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.positions: dict[str, dict[str, Any]] = {}  # channel -> {offset, epoch}
        self.auth_replies: list[dict[str, Any]] = []
        self.close_codes: list[int] = []
        self.unrecovered: set[str] = set()
        self.connects = 0
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_max)
        self._ws: Any = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed: ClientClosedError | None = None
        self.send_queue_max = send_queue_max
        self._outbox: deque[dict[str, Any]] = deque()      # not yet written to a socket
        self._unconfirmed: dict[str, dict[str, Any]] = {}  # chat messages written, echo not seen
        self._send_lock = asyncio.Lock()
        self.duplicates_dropped = 0
        self.present: dict[str, set[str]] = {}  # channel -> users, from presence events and queries
        self._presence_waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open and authenticate (raises ClientClosedError on a terminal failure); then keep the
        connection alive in the background, reconnecting as the close codes say."""
        ws, reply = await self._open()
        self._task = asyncio.create_task(self._run(ws))
        await self._flush()
        return reply

    async def close(self) -> None:
        self._closed = ClientClosedError("closed by the application", 1000)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)

    async def __aenter__(self) -> SwitchboardClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- sending ---------------------------------------------------------------------------

    async def send(self, type_: str, payload: dict[str, Any] | None = None, *,
                   timeout_s: float = 10.0) -> None:
        """Send `{type, payload}` now, or queue it (in order) until the next connection. A chat
        message gets an `id` if it has none. Raises SendQueueFullError past `send_queue_max`,
        ClientClosedError once the client has stopped; `timeout_s` bounds the socket write."""
        if self._closed is not None:
            raise self._closed
        if len(self._outbox) + len(self._unconfirmed) >= self.send_queue_max:
            raise SendQueueFullError(f"{self.send_queue_max} messages are waiting to be sent")
        body = dict(payload or {})
        if type_ == "chat_message":
            body.setdefault("id", uuid.uuid4().hex)
        self._outbox.append({"type": type_, "payload": body})
        async with asyncio.timeout(timeout_s):
            await self._flush()

    def queued(self) -> int:
        """Messages not yet written, plus chat messages written but not yet seen back."""
        return len(self._outbox) + len(self._unconfirmed)

    async def _flush(self) -> None:
        """Write the queue in order while connected; what cannot be written stays queued."""
        async with self._send_lock:
            while self._outbox and self._connected.is_set():
                frame = self._outbox.popleft()
                try:
                    await self._ws.send(json.dumps(frame))
                except ConnectionClosed:
                    self._outbox.appendleft(frame)
                    return  # the reader sees the close; the reconnect flushes again
                except asyncio.CancelledError:
                    self._outbox.appendleft(frame)  # maybe written: a retry is stored once
                    raise
                if frame["type"] == "chat_message":
                    self._unconfirmed[frame["payload"]["id"]] = frame

    def _requeue_unconfirmed(self) -> None:
        """After a reconnect: chat messages not seen back go first, in their order (the server
        stores a retried id once)."""
        self._outbox.extendleft(reversed(list(self._unconfirmed.values())))
        self._unconfirmed.clear()

    async def presence(self, channel: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """Who is in the channel: `{channel, users: [{user_id, connections}], count}`.
        Raises PresenceError when refused, TimeoutError when no answer comes in time."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiters = self._presence_waiters.setdefault(channel, [])
        waiters.append(fut)
        try:
            await self.send("presence", {"channel": channel}, timeout_s=timeout_s)
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            if fut in waiters:
                waiters.remove(fut)

    async def chat(self, content: str, *, message_id: str | None = None,
                   channel: str | None = None) -> None:
        payload: dict[str, Any] = {"content": content}
        if message_id:
            payload["id"] = message_id
        if channel:
            payload["channel"] = channel
        await self.send("chat_message", payload)

    # ---- receiving -------------------------------------------------------------------------

    async def next_event(self, timeout_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            return await self._events.get()

    async def events(self, timeout_s: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.next_event(timeout_s)

    def pending(self) -> int:
        return self._events.qsize()

    # ---- internals -------------------------------------------------------------------------

    def _auth_frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"token": self.token}
        if self.session_id:
            frame["session_id"] = self.session_id
        if self.channels:
            frame["channels"] = self.channels
        if self.recover and self.positions:
            frame["recover"] = self.positions
        return frame

    async def _open(self) -> tuple[Any, dict[str, Any]]:
        async with asyncio.timeout(self.open_timeout_s):
            ws = await websockets.connect(self.url, max_size=2**24, open_timeout=self.open_timeout_s)
            try:
                await ws.send(json.dumps(self._auth_frame()))
                reply = json.loads(await ws.recv())
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else 1006
                self.close_codes.append(code)
                raise ClientClosedError(f"closed during auth ({code})", code) from e
        if not reply.get("success"):
            await ws.close()
            raise ClientClosedError(f"authentication failed: {reply.get('error')}", 4001)
        self.auth_replies.append(reply)
        self.connects += 1
        self._requeue_unconfirmed()
        for channel, result in (reply.get("recovered") or {}).items():
            if not result.get("recovered", False):
                self.unrecovered.add(channel)
        self._ws = ws
        self._connected.set()
        return ws, reply

    @property
    def url(self) -> str:
        return self.urls[self._url_index % len(self.urls)]

    async def _run(self, ws: Any) -> None:
        attempt = 0
        while True:
            code = await self._read(ws)
            self._connected.clear()
            self.close_codes.append(code)
            if not self.reconnect or not should_reconnect(code):
                self._closed = ClientClosedError(f"closed with {code}", code)
                return
            while True:
                attempt += 1
                self._url_index += 1
                cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt, 10))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
                try:
                    ws, _ = await self._open()
                    attempt = 0
                    await self._flush()
                    break
                except ClientClosedError as e:
                    if e.code is not None and not should_reconnect(e.code):
                        self._closed = e
                        return
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed):
                    continue

    async def _read(self, ws: Any) -> int:
        try:
            async for raw in ws:
                event = json.loads(raw)
                if self._duplicate(event):
                    self.duplicates_dropped += 1
                    continue
                if event.get("type") == "recover_response":
                    for ch, res in event.get("payload", {}).get("channels", {}).items():
                        if not res.get("recovered", False):
                            self.unrecovered.add(ch)
                self._confirm(event)
                if self._on_presence(event):
                    continue
                await self._events.put(event)
        except ConnectionClosed:
            pass
        return ws.close_code if ws.close_code is not None else 1006

    def _duplicate(self, event: dict[str, Any]) -> bool:
        """True for a durable event at or below the last offset seen in its epoch; otherwise
        the event's position becomes the channel's position."""
        offset, channel = event.get("offset"), event.get("channel")
        if not offset or not channel:
            return False
        epoch = event.get("epoch", "")
        last = self.positions.get(channel)
        if last is not None and last.get("epoch") == epoch and offset <= last.get("offset", 0):
            return True
        self.positions[channel] = {"offset": offset, "epoch": epoch}
        return False

    def _confirm(self, event: dict[str, Any]) -> None:
        payload = event.get("payload") or {}
        if event.get("type") == "chat_message":
            event_id = event.get("id", "")
            if self._unconfirmed.pop(event_id, None) is None and self._outbox:
                # Seen back before its retry went out: the retry is not needed.
                self._outbox = deque(f for f in self._outbox if f["payload"].get("id") != event_id
                                     or f["type"] != "chat_message")
        elif event.get("type") == "connection_error" and not payload.get("retryable", True):
            self._unconfirmed.pop(payload.get("message_id", ""), None)

    def _on_presence(self, event: dict[str, Any]) -> bool:
        """Keep `present` current; answer a waiting `presence()`. True when the event was the
        answer to one (it is not queued as an event then)."""
        kind, payload = event.get("type"), event.get("payload") or {}
        channel = event.get("channel") or payload.get("channel", "")
        users = payload.get("users") or ([payload["user_id"]] if "user_id" in payload else [])
        if kind == "presence_join":
            self.present.setdefault(channel, set()).update(users)
        elif kind == "presence_leave":
            self.present.setdefault(channel, set()).difference_update(users)
        elif kind == "presence_response":
            self.present[channel] = {u["user_id"] for u in users}
            return self._answer(channel, event, None)
        elif kind == "error" and payload.get("request") == "presence":
            error = PresenceError(payload.get("message", "presence refused"), payload.get("code", "error"))
            return self._answer(channel, event, error)
        return False

    def _answer(self, channel: str, event: dict[str, Any], error: PresenceError | None) -> bool:
        waiters = self._presence_waiters.get(channel)
        if not waiters:
            return False
        fut = waiters.pop(0)
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(event["payload"])
        return True
