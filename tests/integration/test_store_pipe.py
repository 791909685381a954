"""The router's pipelined append connection (services/common/store/pipe.py) against a real
redis-server: in step when callers give up, failing fast when its connection is cut, connecting
again after, and honouring the URL's user, password and database.

The contract suite (test_store_contract.py, variant "dragonfly-piped") runs every stream-store
test over the pipe as well; these are what only the pipe has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from services.common.settings import Settings
from services.common.store.base import StoreError, StoreUnavailableError
from services.common.store.factory import Backend, open_backend
from services.common.store.pipe import PipeAddress, pipe_address
from services.history.store.base import AppendResult, NewEvent, StreamLimits, StreamStore
from services.history.store.factory import build_stream_store
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)  # a pipe out of step hangs its caller: fail, not wait 300 s

LIMITS = StreamLimits(max_len=1_000, ttl_s=3_600.0, meta_ttl_s=7_200.0, idempotency_window_s=300.0)


def ev(event_id: str) -> NewEvent:
    return NewEvent(event_id, b'{"id":"%s"}' % event_id.encode(), 1)


class Relay:
    """A TCP relay in front of the store that a test can cut (close every connection through
    it) or hold (keep the store's replies from the client until released)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.clients = 0  # connections accepted
        self.clients_closed = 0  # of them, closed by the client (or cut)

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        for client, upstream in self._pairs:
            client.transport.abort()
            upstream.transport.abort()
        self._pairs.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._pairs.append((writer, up_writer))
        for coro in (self._pump(reader, up_writer, gated=False), self._pump(up_reader, writer, gated=True)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool) -> None:
        try:
            while data := await reader.read(65536):
                if gated:
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            if not gated:  # the client's side ended
                self.clients_closed += 1


def settings_for(url: str, prefix: str, tu: float, **extra: object) -> Settings:
    fields: dict[str, object] = {"store_url": url, "key_prefix": prefix, "store_timeout_s": 2.0 * tu}
    return Settings(**{**fields, **extra})  # type: ignore[arg-type]


@pytest.fixture
async def relay(redis_server: RedisServer) -> AsyncIterator[Relay]:
    async with Relay(redis_server.port) as r:
        yield r


async def piped(url: str, key_prefix: str, tu: float, **extra: object) -> tuple[Backend, StreamStore]:
    backend = open_backend(settings_for(url, key_prefix, tu, **extra))
    return backend, build_stream_store(backend, LIMITS, piped_appends=True)


async def close(backend: Backend) -> None:
    """Delete this test's keys (the session's redis-server may be shared) and close."""
    try:
        async for key in backend.redis.scan_iter(match=f"{backend.keys.prefix}:*", count=500):
            await backend.redis.unlink(key)
    finally:
        await backend.aclose()


async def until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


def test_pipe_address_reads_the_url_and_never_shows_the_password() -> None:
    a = pipe_address("redis://bench:p%40ss@store.internal:7001/3")
    assert a == PipeAddress("store.internal", 7001, 3, "bench", "p@ss")
    assert "p@ss" not in repr(a) and "p%40ss" not in repr(a)
    assert pipe_address("redis://127.0.0.1") == PipeAddress("127.0.0.1", 6379, 0, None, None)
    assert pipe_address("redis://:secret@h:1?db=2") == PipeAddress("h", 1, 2, None, "secret")
    assert pipe_address("rediss://h:6380/0") is None  # TLS stays on the pooled client
    assert pipe_address("unix:///run/redis.sock") is None


async def test_a_call_given_up_on_leaves_the_pipe_in_step(
    relay: Relay, redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    # The store's reply to an abandoned call arrives later; the next call must get its own
    # reply, not that one (offsets prove whose reply it was).
    backend, store = await piped(f"redis://127.0.0.1:{relay.port}/0", key_prefix, tu)
    try:
        await store.append("session:p", [ev("a")], new_epoch="E")  # connected
        relay.hold()
        abandoned = asyncio.create_task(store.append("session:p", [ev("b")], new_epoch="E"))
        await asyncio.sleep(0.05 * tu)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        relay.release()
        result = await store.append("session:p", [ev("c")], new_epoch="E")
        assert result.offsets == [3], "the next call got the abandoned call's reply"
        again = await store.append("session:p", [ev("b")], new_epoch="E")
        assert (again.offsets, again.duplicates) == ([2], [True])  # b was stored, once
    finally:
        await close(backend)


async def test_a_cut_connection_fails_its_calls_at_once_and_the_next_call_connects_again(
    relay: Relay, key_prefix: str, tu: float,
) -> None:
    timeout_s = 2.0 * tu
    backend, store = await piped(f"redis://127.0.0.1:{relay.port}/0", key_prefix, tu)
    try:
        assert (await store.append("session:c", [ev("a")], new_epoch="E")).offsets == [1]
        relay.hold()
        pending = asyncio.create_task(store.append_many([("session:c", [ev("b")])], new_epoch="E"))
        await asyncio.sleep(0.05 * tu)
        started = time.monotonic()
        relay.cut()
        with pytest.raises(StoreUnavailableError):
            await pending
        assert time.monotonic() - started < timeout_s / 2, "a lost connection waited for the timeout"
        relay.release()
        results = await store.append_many([("session:c", [ev("b"), ev("c")])], new_epoch="E")
        assert isinstance(results[0], AppendResult)
        assert results[0].offsets[1] == results[0].offsets[0] + 1
        assert results[0].offsets[1] == 3  # b (stored once, whatever the cut did) and c
    finally:
        await close(backend)


async def test_a_store_that_stops_answering_fails_calls_within_the_timeout_then_recovers(
    relay: Relay, key_prefix: str, tu: float,
) -> None:
    backend, store = await piped(f"redis://127.0.0.1:{relay.port}/0", key_prefix, tu,
                                 store_timeout_s=0.3 * tu)
    try:
        await store.append("session:h", [ev("a")], new_epoch="E")
        relay.hold()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await store.append("session:h", [ev("b")], new_epoch="E")
        assert time.monotonic() - started < 2.0 * tu
        relay.release()
        # The stalled connection was dropped; a fresh one answers, and b was stored once.
        result = await store.append("session:h", [ev("b"), ev("c")], new_epoch="E")
        assert (result.offsets, result.duplicates) == ([2, 3], [True, False])
    finally:
        await close(backend)


async def test_a_caller_that_gives_up_during_the_login_leaves_no_connection_open(
    relay: Relay, key_prefix: str, tu: float,
) -> None:
    # The store's timeout far beyond the wait below: only the give-up may close the connection.
    backend, store = await piped(f"redis://:pw@127.0.0.1:{relay.port}/0", key_prefix, tu,
                                 store_timeout_s=30.0 * tu)
    try:
        relay.hold()  # the AUTH is never answered
        call = asyncio.create_task(store.append("session:l", [ev("a")], new_epoch="E"))
        assert await until(lambda: relay.clients == 1, 2.0 * tu)
        await asyncio.sleep(0.05 * tu)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await until(lambda: relay.clients_closed == 1, 2.0 * tu), \
            "the half-set-up connection was left open"
    finally:
        relay.release()
        await backend.aclose()


async def test_the_pipe_logs_in_with_the_urls_user_and_password_and_uses_its_database(
    key_prefix: str, tu: float,
) -> None:
    with RedisServer() as server:
        admin = aioredis.Redis(host="127.0.0.1", port=server.port)
        try:
            await admin.acl_setuser("router", enabled=True, passwords=["+s3cret"], keys=["*"],
                                    commands=["+@all"])
            await admin.config_set("requirepass", "adminpw")
            backend, store = await piped(f"redis://router:s3cret@127.0.0.1:{server.port}/3",
                                         key_prefix, tu)
            try:
                assert (await store.append_many([("session:a", [ev("a")])], new_epoch="E"))[0].offsets == [1]  # type: ignore[union-attr]
            finally:
                await backend.aclose()
            db3 = aioredis.Redis(host="127.0.0.1", port=server.port, db=3, password="adminpw")
            try:
                assert await db3.exists(f"{key_prefix}:{{session:a}}:stream") == 1
            finally:
                await db3.aclose()

            backend, store = await piped(f"redis://router:wrong@127.0.0.1:{server.port}/3",
                                         key_prefix, tu)
            try:
                with pytest.raises(StoreError) as refused:
                    await store.append_many([("session:a", [ev("b")])], new_epoch="E")
                assert "wrong" not in str(refused.value) and "s3cret" not in str(refused.value)
            finally:
                await backend.aclose()
        finally:
            await admin.aclose()


async def test_the_pipes_append_commands_are_the_bytes_the_pooled_path_sends(
    redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    from services.common.store.dragonfly import pack_evalsha
    from services.history.store.dragonfly import DragonflyStreamStore

    backend, store = await piped(redis_server.url, key_prefix, tu)
    try:
        assert isinstance(store, DragonflyStreamStore)
        appends = [("session:été", [NewEvent("a", b'{"x":"\xc3\xa9"}', 1), NewEvent("b", b"{}", 2)]),
                   ("session:z", [NewEvent("c" * 64, b'{"n":' + b"9" * 500 + b"}", 1)])]
        calls = [store._append_call(channel, events, "0000abcd") for channel, events in appends]
        assert store.pack_appends(appends, "0000abcd") == pack_evalsha(store._append.sha, calls)
    finally:
        await close(backend)


def test_the_append_round_trip_benchmark_runs_and_cleans_up(redis_server: RedisServer) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bench.append_roundtrip", "--url", redis_server.url,
                          "-N", "40", "--rounds", "1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result["median_us"]) == {"pooled", "pipe"}
    assert all(v > 0 for v in result["median_us"].values())
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        assert not list(client.scan_iter(match="bench-append-*")), "the benchmark left keys behind"
    finally:
        client.close()
