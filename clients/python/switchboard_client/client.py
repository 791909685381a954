"""An asyncio WebSocket client: auth, reconnect with full-jitter backoff, and recovery.

The client remembers the last `{offset, epoch}` it received per channel and sends them in the
auth frame of every reconnect (`recover`), so the edge replays what was missed. Channels the
server could not recover are reported in `unrecovered` (the application should reload them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
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


class SwitchboardClient:
    def __init__(
        self, url: str | list[str], token: str, *, session_id: str | None = None,
        channels: list[str] | None = None, reconnect: bool = True, recover: bool = True,
        backoff_base_s: float = 0.1, backoff_max_s: float = 5.0, open_timeout_s: float = 10.0,
        queue_max: int = 1_000_000,
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

    # ---- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> dict[str, Any]:
        """Open and authenticate (raises ClientClosedError on a terminal failure); then keep the
        connection alive in the background, reconnecting as the close codes say."""
        ws, reply = await self._open()
        self._task = asyncio.create_task(self._run(ws))
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
        """Send `{type, payload, timestamp}`; waits (bounded) for a live connection."""
        async with asyncio.timeout(timeout_s):
            while True:
                if self._closed is not None:
                    raise self._closed
                await self._connected.wait()
                try:
                    await self._ws.send(json.dumps({"type": type_, "payload": payload or {}}))
                    return
                except ConnectionClosed:
                    await asyncio.sleep(0.01)

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
                offset = event.get("offset")
                channel = event.get("channel")
                if offset and channel:
                    self.positions[channel] = {"offset": offset, "epoch": event.get("epoch", "")}
                if event.get("type") == "recover_response":
                    for ch, res in event.get("payload", {}).get("channels", {}).items():
                        if not res.get("recovered", False):
                            self.unrecovered.add(ch)
                await self._events.put(event)
        except ConnectionClosed:
            pass
        return ws.close_code if ws.close_code is not None else 1006
