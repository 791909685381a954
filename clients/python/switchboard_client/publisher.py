"""HTTP publisher for backend services: POST /api/v1/publish with retries.

Every publish carries an id (generated when not given), so retries after a timeout or a 503
are stored and delivered once. `publish_many` stores several events of one channel in order, all
or none; `stream(channel)` is for a producer of many small events (a streamed AI reply): sends
return at once, and whatever queued while one request was in flight leaves in the next one, in
order, so the rate is not bound by one round trip per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


class PublishError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


MAX_BATCH = 32  # events per request: the edge's bound for one ordered unit


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


class Publisher:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0,
                 retry_for_s: float = 30.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout_s,
            headers={"authorization": f"Bearer {token}"})
        self._retry_for_s = retry_for_s

    async def publish(self, channel: str, type_: str, payload: dict[str, Any], *,
                      event_id: str | None = None, ephemeral: bool = False) -> dict[str, Any]:
        """Publish; returns `{id, offset, epoch, ...}` once stored. Retries 503s and transport
        errors with full-jitter backoff until retry_for_s; raises PublishError otherwise."""
        body: dict[str, Any] = {"channel": channel, "type": type_, "payload": payload,
                                "id": event_id or uuid.uuid4().hex}
        if ephemeral:
            body["ephemeral"] = True
        return await self._post(body)

    async def publish_many(self, channel: str, events: Sequence[Event]) -> dict[str, Any]:
        """Store 1..32 durable events of one channel in this order, all or none (retried as a
        whole, with the same ids); returns `{channel, epoch, results: [{id, offset, duplicate}]}`."""
        body = {"channel": channel, "events": [
            {"type": e.type, "payload": e.payload, "id": e.id} for e in events]}
        return await self._post(body)

    def stream(self, channel: str, *, max_queued: int = 1_000) -> StreamPublisher:
        """An ordered, batching publisher of one channel's events (use `async with`)."""
        return StreamPublisher(self, channel, max_queued=max_queued)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for_s
        attempt = 0
        while True:
            try:
                r = await self._client.post("/api/v1/publish", json=body)
                if r.status_code == 200:
                    result: dict[str, Any] = r.json()
                    return result
                err = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                failure = PublishError(r.status_code, err.get("code", "error"), err.get("error", r.text))
                if r.status_code != 503:
                    raise failure
            except httpx.TransportError as e:
                failure = PublishError(0, "transport", str(e))
            attempt += 1
            if loop.time() >= deadline:
                raise failure
            await asyncio.sleep(random.uniform(0, min(2.0, 0.05 * 2 ** attempt)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class StreamPublisher:
    """One channel's durable events, stored in the order `send` was called.

    `send` queues and returns the event id at once (it waits only while `max_queued` events are
    queued: back-pressure). One request is in flight at a time; everything queued meanwhile
    leaves in the next one (up to 32 events, stored all or none), so a fast producer costs a
    request per round trip, not per event. A request that fails after the publisher's retries
    stops the stream: the failure is raised by the next `send`, `flush` or the `async with` exit,
    and the events not yet stored are in `unsent`.
    """

    def __init__(self, publisher: Publisher, channel: str, *, max_queued: int) -> None:
        self._publisher = publisher
        self.channel = channel
        self._max_queued = max_queued
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failure: PublishError | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # HTTP requests made, retries not counted
        self.stored = 0    # events acknowledged
        self.unsent: list[Event] = []

    async def send(self, type_: str, payload: dict[str, Any], *, event_id: str | None = None) -> str:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("the stream is closed")
        while len(self._queue) >= self._max_queued:
            self._room.clear()
            await self._room.wait()
            if self._failure is not None:
                raise self._failure
        event = Event(type_, payload, event_id or uuid.uuid4().hex)
        self._queue.append(event)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return event.id

    async def flush(self) -> None:
        """Wait until every event sent so far is stored; raises the stream's failure."""
        await self._idle.wait()
        if self._failure is not None:
            raise self._failure

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._room.set()
                self.requests += 1
                try:
                    await self._publisher.publish_many(self.channel, batch)
                except PublishError as e:
                    self._failure = e
                    self.unsent = batch + list(self._queue)
                    self._queue.clear()
                    self._room.set()
                    self._idle.set()
                    return
                self.stored += len(batch)
            self._idle.set()

    async def aclose(self) -> None:
        """Flush, then stop. Raises the stream's failure, if any."""
        self._closed = True
        try:
            await self.flush()
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def __aenter__(self) -> StreamPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
