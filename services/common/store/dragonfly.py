"""DragonflyDB back end (Redis 7 is the stand-in) via redis.asyncio.

The only module tree that imports `redis`, together with the tiers' own `store/dragonfly.py`.
Every multi-key operation is a Lua script that declares all its keys (DragonflyDB requires it);
connection and timeout errors become StoreUnavailableError.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import redis
import redis.asyncio as aioredis
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.store.base import (
    Keys,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from services.common.store.pipe import pack

P = ParamSpec("P")
T = TypeVar("T")

LUA_DIR = Path(__file__).parent / "lua"
DRIVER_INFO = DriverInfo(lib_version=redis.__version__)  # what CLIENT SETINFO reports


def open_redis(url: str, *, timeout_s: float, max_connections: int, pool_wait_s: float) -> aioredis.Redis:
    # socket_timeout must exceed any blocking command we issue (we issue none); the pool is
    # sized explicitly rather than inheriting redis-py's default cap (see shared/bench RESULTS).
    # A blocking pool: when every connection is in use a call waits up to pool_wait_s for one
    # (then StoreBusyError), instead of failing at once as if the store were down.
    # RESP2: with redis-py 8.1's default RESP3, "auto" maintenance notifications make the pool
    # skip its stale-connection check (redis/redis-py#4252, fixed by #4260), so after a store
    # restart every pooled connection failed once. We use nothing RESP3 offers.
    # The driver's version is given: otherwise every new pooled connection looks it up in the
    # installed packages' metadata (0.4 ms of CPU each; a pool refilling after a store restart,
    # or growing in a connection storm, pays it per connection).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        protocol=2,
        driver_info=DRIVER_INFO,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        max_connections=max_connections,
        timeout=pool_wait_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)


def _pool_exhausted(e: RedisConnectionError) -> bool:
    # BlockingConnectionPool raises a plain ConnectionError from the wait's TimeoutError.
    return isinstance(e, MaxConnectionsError) or (
        str(e) == "No connection available." and isinstance(e.__cause__, TimeoutError))


def translate_errors(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except RedisConnectionError as e:
            if _pool_exhausted(e):
                raise StoreBusyError("store busy: no pooled connection within the wait") from e
            raise StoreUnavailableError(f"store unavailable: {type(e).__name__}") from e
        except (RedisTimeoutError, OSError, TimeoutError) as e:
            raise StoreUnavailableError(f"store unavailable: {type(e).__name__}") from e
        except RedisError as e:
            raise store_error(e) from e

    return wrapper


def store_error(e: Exception) -> StoreError:
    """A redis error answered by the store (not a connection failure) as our error type."""
    if "LOADING" in str(e) or "BUSY" in str(e):
        return StoreUnavailableError(f"store not ready: {e}")
    return StoreError(str(e))


def load_script(client: aioredis.Redis, path: Path) -> Any:
    return client.register_script(path.read_text())


async def evalsha_many(client: aioredis.Redis, script: Any,
                       calls: Sequence[tuple[Sequence[str], Sequence[Any]]], *,
                       raise_on_error: bool = False) -> list[Any]:
    """Run a registered script once per (keys, args) in one pipeline: one round trip.

    Not a transaction: each script call is atomic on its own, and the calls' keys may live on
    different shards. EVALSHA directly (a Script object in a pipeline asks SCRIPT EXISTS on
    every execute); if the store lost its scripts, load it and run the batch again, so the
    calls must be idempotent. Per-call errors are returned, or with `raise_on_error` the first
    is raised (callers' `translate_errors` makes it a StoreError)."""
    replies = await _evalsha_pipeline(client, script.sha, calls)
    if any(isinstance(r, NoScriptError) for r in replies):
        await client.script_load(script.script)
        replies = await _evalsha_pipeline(client, script.sha, calls)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


async def _evalsha_pipeline(client: aioredis.Redis, sha: str,
                            calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    """The calls written at once and their replies read, on one pooled connection, with the
    connection's retry policy, as a redis-py pipeline does. Packed here: the commands of a
    batch are the hot path of every durable publish, and redis-py's general packing (an encoder
    call per argument) and pipeline object were about 13 % of a router's time under cProfile."""
    packed = pack_evalsha(sha, calls)
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def run() -> list[Any]:
        await conn.send_packed_command(packed)
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await conn.read_response())
            except ResponseError as e:  # this call's error; the connection stays in step
                replies.append(e)
        return replies

    async def failed(error: Exception) -> None:
        await conn.disconnect()

    try:
        replies: list[Any] = await conn.retry.call_with_retry(run, failed)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)  # replies may be unread: never reuse it
        raise
    finally:
        await pool.release(conn)


def pack_evalsha(sha: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> bytes:
    """EVALSHA commands in RESP: keys are str, arguments str, bytes or int."""
    return pack(*(("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls))


class DragonflyMembershipStore:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._r = client
        self._keys = keys
        self._register = load_script(client, LUA_DIR / "member_register.lua")
        self._members = load_script(client, LUA_DIR / "member_list.lua")

    def _k(self, role: str) -> list[str]:
        return [self._keys.members(role, "z"), self._keys.members(role, "h")]

    @translate_errors
    async def register(self, role: str, node_id: str, address: str, ttl_s: float) -> None:
        now_ms = int(time.time() * 1000)
        await self._register(keys=self._k(role), args=[node_id, address, now_ms + int(ttl_s * 1000), now_ms])

    @translate_errors
    async def deregister(self, role: str, node_id: str) -> None:
        z, h = self._k(role)
        async with self._r.pipeline(transaction=True) as p:
            p.zrem(z, node_id)
            p.hdel(h, node_id)
            await p.execute()

    @translate_errors
    async def members(self, role: str) -> dict[str, str]:
        raw = await self._members(keys=self._k(role), args=[int(time.time() * 1000)])
        return {_s(raw[i]): _s(raw[i + 1]) for i in range(0, len(raw), 2) if raw[i + 1] is not None}

    @translate_errors
    async def ping(self) -> None:
        await self._r.ping()

    async def aclose(self) -> None:
        return None  # the client belongs to whoever opened it


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
