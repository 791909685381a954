"""One pipelined connection to the store, for a hot path that runs one kind of command.

A router appends every durable publish with one EVALSHA per channel. Through redis-py's pooled
client the store round trip of a single-event append cost about 75 µs of CPU (the pool's lock
and health check, the retry wrapper, a timeout and a parser call per reply); written to a socket
of its own and read back with hiredis, about 34 µs, most of it the kernel's. The router's whole
append path went from 123 to 77 µs (`bench/append_roundtrip.py`).

Commands are written as they come and their replies are matched to them in order, so calls
share the connection without waiting for each other. A caller that gives up (its own timeout,
a cancel) leaves its entry in place: its replies are read and dropped, and the connection stays
in step. A connection whose oldest call has gone unanswered for `timeout_s` is taken for dead:
every call on it fails with StoreUnavailableError and the next call connects again.

Only `redis://` URLs (host, port, user, password, database); TLS and Unix sockets stay on the
pooled client (`pipe_address` returns None for them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from services.common.store.base import StoreBusyError, StoreError, StoreUnavailableError


@dataclass(frozen=True)
class PipeAddress:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never the password (logs, reprs in errors)
        return f"PipeAddress({self.host}:{self.port}/{self.db})"


def pipe_address(url: str) -> PipeAddress | None:
    """Where a `redis://` URL points; None for any other scheme."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        return None
    db_text = parts.path.lstrip("/") or parse_qs(parts.query).get("db", ["0"])[0]
    return PipeAddress(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        db=int(db_text or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def bulk(b: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(b), b)


def pack(*commands: Sequence[bytes | str | int]) -> bytes:
    """Commands in RESP: each argument str, bytes or int."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        out.extend(bulk(a.encode() if isinstance(a, str) else b"%d" % a if isinstance(a, int) else a)
                   for a in command)
    return b"".join(out)


class _Call:
    __slots__ = ("deadline", "future", "left", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Any]], deadline: float) -> None:
        self.left = count
        self.replies: list[Any] = []
        self.future = future
        self.deadline = deadline


class _Connection(asyncio.Protocol):
    def __init__(self, pipe: CommandPipe, timeout_s: float) -> None:
        self._pipe = pipe
        self._timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._watchdog: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.calls: deque[_Call] = deque()
        self.lost = False

    def add(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Write `count` packed commands; the future gets their replies. One timer watches the
        oldest call (not one per call): when it fires, an unanswered oldest call past its
        deadline fails the connection."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        call = _Call(count, future, self._loop.time() + self._timeout_s)
        self.calls.append(call)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(call.deadline, self._check)
        assert self.transport is not None
        self.transport.write(packed)
        return future

    def _check(self) -> None:
        self._watchdog = None
        if self.lost or not self.calls:
            return
        deadline = self.calls[0].deadline
        if deadline <= self._loop.time():
            self.fail(StoreUnavailableError(f"store did not answer within {self._timeout_s}s"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        calls = self.calls
        while (reply := self._reader.gets()) is not False:
            if not calls:  # a reply nobody asked for: the stream is out of step
                self.fail(StoreUnavailableError("store sent an unexpected reply"))
                return
            call = calls[0]
            call.replies.append(reply)
            call.left -= 1
            if not call.left:
                calls.popleft()
                if not call.future.done():  # its caller may have given up
                    call.future.set_result(call.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_calls(StoreUnavailableError(f"store connection lost: {type(exc).__name__ if exc else 'closed'}"))
        self._pipe._lost(self)

    def fail(self, error: StoreError) -> None:
        """Fail every call on this connection and drop it."""
        self.lost = True
        self._fail_calls(error)
        if self.transport is not None:
            self.transport.abort()
        self._pipe._lost(self)

    def _fail_calls(self, error: StoreError) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        calls, self.calls = self.calls, deque()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)


class CommandPipe:
    def __init__(self, address: PipeAddress, *, timeout_s: float, max_pending: int = 256) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    async def execute(self, packed: bytes, count: int) -> list[Any]:
        """Write `count` packed commands and return their replies in order; a command the store
        refused is a `hiredis.ReplyError` in its place. Raises StoreUnavailableError (no
        connection, no answer within `timeout_s`) or StoreBusyError (too many calls pending)."""
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connected()
        if len(conn.calls) >= self._max_pending:
            raise StoreBusyError(f"store busy: {len(conn.calls)} calls pending on the pipe")
        return await conn.add(packed, count)  # answered, or failed by the connection (lost, no answer in time)

    async def _connected(self) -> _Connection:
        async with self._connect_lock:  # callers arriving meanwhile share the one connect
            if self._closed:
                raise StoreUnavailableError("store pipe closed")
            conn = self._conn
            if conn is None or conn.lost:
                conn = self._conn = await self._connect()
            return conn

    async def _connect(self) -> _Connection:
        a = self._address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(self, self._timeout_s),
                                                       a.host, a.port)
        except (OSError, TimeoutError) as e:
            raise StoreUnavailableError(f"store unreachable: {type(e).__name__}") from e
        try:
            await self._setup(conn)
        except BaseException:  # refused, lost, or the caller gave up: never leave it open
            if not conn.lost:
                conn.fail(StoreUnavailableError("store connection setup did not finish"))
            raise
        return conn

    async def _setup(self, conn: _Connection) -> None:
        """Log in and select the database, as the URL asks."""
        a = self._address
        setup: list[Sequence[bytes | str | int]] = []
        if a.password is not None:
            setup.append(("AUTH", a.username, a.password) if a.username else ("AUTH", a.password))
        if a.db:
            setup.append(("SELECT", a.db))
        if not setup:
            return
        try:
            replies = await conn.add(pack(*setup), len(setup))
        except StoreUnavailableError as e:
            raise StoreUnavailableError(f"store did not answer the connection's setup: {e}") from None
        refused = [r for r in replies if isinstance(r, hiredis.ReplyError)]
        if refused:
            conn.fail(StoreError("store refused the connection's setup"))
            raise StoreError(f"store refused the connection's setup: {str(refused[0]).split()[0]}")

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def aclose(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and not conn.lost:
            conn.fail(StoreUnavailableError("store pipe closed"))
        await asyncio.sleep(0)  # the transport's connection_lost runs now, not after the loop is gone
