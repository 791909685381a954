"""The store contract suite: the same tests against the in-memory and the DragonflyDB adapters.

Stores are built only through the factories (`open_backend`, each tier's `build_*_store`), as every tier does.
The DragonflyDB adapter runs against a real redis-server (Redis 7 is DragonflyDB's stand-in);
each test gets its own key prefix instead of flushing the database.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from services.common.settings import Settings
from services.common.store.base import StoreBusyError, StoreUnavailableError
from services.common.store.factory import Backend, build_membership_store, open_backend
from services.edge.store.factory import build_presence_store
from services.history.store.base import AppendResult, NewEvent, ReadResult, StreamLimits, StreamStore
from services.history.store.factory import build_stream_store
from services.router.store.factory import build_ownership_store
from tests.support import free_port
from tests.support.redis_server import RedisServer

LIMITS = StreamLimits(max_len=1_000, ttl_s=3_600.0, meta_ttl_s=7_200.0, idempotency_window_s=300.0)


def settings_for(url: str, prefix: str, tu: float, **extra: Any) -> Settings:
    fields: dict[str, Any] = {"store_url": url, "key_prefix": prefix, "store_timeout_s": 2.0 * tu}
    return Settings(**{**fields, **extra})


_PIPED: set[int] = set()  # backends whose stream stores append over a pipe (id())


def streams(backend: Backend) -> StreamStore:
    """The stream store as the contract's variant builds it: appends over the router's pipelined
    connection for "dragonfly-piped", over the pooled client otherwise."""
    return build_stream_store(backend, LIMITS, piped_appends=id(backend) in _PIPED)


@pytest.fixture(params=["memory", "dragonfly", "dragonfly-piped"])
async def backend(
    request: pytest.FixtureRequest, key_prefix: str, tu: float,
) -> AsyncIterator[Backend]:
    """An opened backend of each kind; the redis-server starts only for the dragonfly runs.
    "dragonfly-piped" is the same store with appends on a pipelined connection (as the owning
    router appends)."""
    memory = request.param == "memory"
    url = f"memory://{key_prefix}" if memory else request.getfixturevalue("redis_server").url
    opened = open_backend(settings_for(url, key_prefix, tu))
    if request.param == "dragonfly-piped":
        _PIPED.add(id(opened))
    try:
        yield opened
        if opened.redis is not None:
            await lose_data(opened)  # leave nothing behind on a shared SWITCHBOARD_TEST_REDIS_URL
    finally:
        _PIPED.discard(id(opened))
        await opened.aclose()


def ev(event_id: str, body: bytes | None = None, priority: int = 2) -> NewEvent:
    default = b'{"id":"%s"}' % event_id.encode()
    return NewEvent(event_id, body if body is not None else default, priority)


async def lose_data(backend: Backend) -> None:
    """Make the store forget this test's data, as a store that lost its data (or expired) would."""
    if backend.memory is not None:
        backend.memory.data["streams"].clear()
        return
    # Only this test's keys: the session server (or SWITCHBOARD_TEST_REDIS_URL) is shared.
    async for key in backend.redis.scan_iter(match=f"{backend.keys.prefix}:*", count=500):
        await backend.redis.unlink(key)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


def offsets_of(result: ReadResult) -> list[int]:
    return [e.offset for e in result.events]


# ---- membership ----------------------------------------------------------------------------


async def test_members_lists_registered_nodes_per_role(backend: Backend) -> None:
    store = build_membership_store(backend)
    await store.register("router", "r1", "127.0.0.1:7001", 30.0)
    await store.register("router", "r2", "127.0.0.1:7002", 30.0)
    await store.register("history", "h1", "127.0.0.1:8001", 30.0)

    assert await store.members("router") == {"r1": "127.0.0.1:7001", "r2": "127.0.0.1:7002"}
    assert await store.members("history") == {"h1": "127.0.0.1:8001"}
    assert await store.members("edge") == {}


async def test_register_again_refreshes_and_updates_address(backend: Backend) -> None:
    store = build_membership_store(backend)
    await store.register("router", "r1", "127.0.0.1:7001", 30.0)
    await store.register("router", "r1", "127.0.0.1:7999", 30.0)

    assert await store.members("router") == {"r1": "127.0.0.1:7999"}


async def test_deregister_drops_the_lease_now(backend: Backend) -> None:
    store = build_membership_store(backend)
    await store.register("router", "r1", "a1", 30.0)
    await store.register("router", "r2", "a2", 30.0)

    await store.deregister("router", "r1")
    await store.deregister("router", "r1")  # idempotent
    await store.deregister("router", "never-registered")

    assert await store.members("router") == {"r2": "a2"}


async def test_lease_expires_without_refresh(backend: Backend, tu: float) -> None:
    store = build_membership_store(backend)
    ttl = 0.3 * tu
    await store.register("router", "short", "a1", ttl)
    await store.register("router", "long", "a2", 60.0)
    assert set(await store.members("router")) == {"short", "long"}

    async def short_gone() -> bool:
        return "short" not in await store.members("router")

    assert await eventually(short_gone, ttl + 2.0 * tu)
    assert await store.members("router") == {"long": "a2"}


async def test_refreshing_keeps_the_lease_alive(backend: Backend, tu: float) -> None:
    store = build_membership_store(backend)
    ttl = 0.4 * tu
    await store.register("router", "r1", "a1", ttl)
    for _ in range(3):  # 3 x 0.2 = 0.6 > ttl: alive only because it was refreshed
        await asyncio.sleep(0.2 * tu)
        await store.register("router", "r1", "a1", ttl)
        assert await store.members("router") == {"r1": "a1"}


async def test_ping_answers(backend: Backend) -> None:
    await build_membership_store(backend).ping()


async def test_stores_opened_on_the_same_url_share_state(backend: Backend, tu: float) -> None:
    twin = open_backend(settings_for(backend.url, backend.keys.prefix, tu))
    try:
        await build_membership_store(backend).register("edge", "e1", "a1", 30.0)
        await build_ownership_store(backend, ttl_s=60.0).add_edge("e1", ["session:s1"])
        await streams(backend).append("session:s1", [ev("m1")], new_epoch="E")

        assert await build_membership_store(twin).members("edge") == {"e1": "a1"}
        assert await build_ownership_store(twin, ttl_s=60.0).edges_of("session:s1") == {"e1"}
        read = await build_stream_store(twin, LIMITS).read("session:s1", 0, 10)
        assert (read.epoch, offsets_of(read)) == ("E", [1])
    finally:
        await twin.aclose()


# ---- ownership -----------------------------------------------------------------------------


async def test_edges_of_unknown_channel_is_empty(backend: Backend) -> None:
    assert await build_ownership_store(backend, ttl_s=60.0).edges_of("session:nobody") == set()


async def test_add_edge_is_idempotent_and_per_channel(backend: Backend) -> None:
    store = build_ownership_store(backend, ttl_s=60.0)
    await store.add_edge("e1", ["session:a"])
    await store.add_edge("e1", ["session:a"])
    await store.add_edge("e2", ["session:a"])
    await store.add_edge("e3", ["user:u1"])

    assert await store.edges_of("session:a") == {"e1", "e2"}
    assert await store.edges_of("user:u1") == {"e3"}


async def test_ownership_batches_cover_every_channel(backend: Backend) -> None:
    """A re-attach sends every channel of an edge at once: all are written, in any batch size."""
    store = build_ownership_store(backend, ttl_s=60.0)
    channels = [f"session:s{i}" for i in range(1234)]
    await store.add_edge("e1", channels)
    await store.add_edge("e2", channels[:3])
    await store.add_edge("e2", [])

    assert await store.edges_of("session:s0") == {"e1", "e2"}
    assert await store.edges_of("session:s1233") == {"e1"}
    await store.remove_edge("e1", channels[1:])
    assert await store.edges_of("session:s0") == {"e1", "e2"}
    assert await store.edges_of("session:s1") == {"e2"}
    assert await store.edges_of("session:s1233") == set()
    many = await store.edges_of_many([*channels[:2], "session:never", *channels[2:]])
    assert many[:3] == [{"e1", "e2"}, {"e2"}, set()] and len(many) == 1235


async def test_remove_edge_is_idempotent(backend: Backend) -> None:
    store = build_ownership_store(backend, ttl_s=60.0)
    await store.add_edge("e1", ["session:a"])
    await store.add_edge("e2", ["session:a"])

    await store.remove_edge("e1", ["session:a"])
    await store.remove_edge("e1", ["session:a"])
    await store.remove_edge("e1", ["session:never"])
    assert await store.edges_of("session:a") == {"e2"}

    await store.remove_edge("e2", ["session:a"])
    assert await store.edges_of("session:a") == set()
    await store.add_edge("e1", ["session:a"])  # an emptied channel can be owned again
    assert await store.edges_of("session:a") == {"e1"}


# ---- streams: offsets, epochs, ordering ----------------------------------------------------


async def test_offsets_start_at_one_and_epoch_is_stable(backend: Backend) -> None:
    store = streams(backend)
    first = await store.append("session:s", [ev("a")], new_epoch="epoch-1")
    second = await store.append("session:s", [ev("b")], new_epoch="epoch-2")
    third = await store.append("session:s", [ev("c")], new_epoch="epoch-3")

    assert (first.epoch, first.offsets, first.duplicates) == ("epoch-1", [1], [False])
    assert (second.epoch, second.offsets) == ("epoch-1", [2])
    assert (third.epoch, third.offsets) == ("epoch-1", [3])


async def test_channels_have_independent_offsets(backend: Backend) -> None:
    store = streams(backend)
    await store.append("session:a", [ev("a1"), ev("a2")], new_epoch="EA")
    b = await store.append("session:b", [ev("b1")], new_epoch="EB")

    assert (b.epoch, b.offsets) == ("EB", [1])


async def test_batch_append_keeps_order_bodies_and_priorities(backend: Backend) -> None:
    store = streams(backend)
    batch = [
        ev("a", b'{"n":1}', priority=1),
        ev("b", '{"n":2,"text":"h\u00e9llo \u2603"}'.encode(), priority=3),
        ev("c", b'{"n":3}', priority=2),
    ]
    result = await store.append("session:s", batch, new_epoch="E")
    assert result.offsets == [1, 2, 3]
    assert result.duplicates == [False, False, False]

    read = await store.read("session:s", 0, 100)
    assert [(e.offset, e.body, e.priority) for e in read.events] == [
        (1, b'{"n":1}', 1),
        (2, '{"n":2,"text":"h\u00e9llo \u2603"}'.encode(), 3),
        (3, b'{"n":3}', 2),
    ]
    assert (read.epoch, read.top_offset, read.first_offset) == ("E", 3, 1)


async def test_concurrent_appends_get_distinct_consecutive_offsets(backend: Backend) -> None:
    store = streams(backend)
    results = await asyncio.gather(*(
        store.append("session:busy", [ev(f"m{i}")], new_epoch=f"epoch-{i}") for i in range(50)
    ))

    offsets = sorted(r.offsets[0] for r in results)
    assert offsets == list(range(1, 51))
    assert len({r.epoch for r in results}) == 1  # exactly one append created the epoch
    read = await store.read("session:busy", 0, 100)
    assert offsets_of(read) == list(range(1, 51))


async def test_append_many_appends_each_channel_atomically_in_one_call(backend: Backend) -> None:
    store = streams(backend)
    await store.append("session:a", [ev("a0")], new_epoch="EA")
    results = await store.append_many([
        ("session:a", [ev("a1"), ev("a2")]),
        ("session:b", [ev("b1")]),
        ("session:a", [ev("a3"), ev("a1")]),  # the same channel twice: in order, a1 a duplicate
    ], new_epoch="EB")

    assert all(isinstance(r, AppendResult) for r in results)
    a1, b, a2 = (r for r in results if isinstance(r, AppendResult))
    assert (a1.epoch, a1.offsets, a1.duplicates) == ("EA", [2, 3], [False, False])
    assert (b.epoch, b.offsets) == ("EB", [1])
    assert (a2.offsets, a2.duplicates) == ([4, 2], [False, True])
    assert offsets_of(await store.read("session:a", 0, 100)) == [1, 2, 3, 4]


async def test_append_many_carries_any_bytes_whole(backend: Backend) -> None:
    """Bodies, ids and channel names that look like the wire protocol's own framing (CRLF,
    length prefixes), non-ASCII text and a single append in a batch: stored and read back as sent."""
    store = streams(backend)
    tricky = '{"t":"line\r\n*2\r\n$3\r\nSET\r\n","u":"h\u00e9llo \u2603"}'.encode()
    [only] = await store.append_many([("session:\u00e9t\u00e9", [ev("id\r\n\u2603", tricky, 3)])],
                                     new_epoch="E")
    assert isinstance(only, AppendResult) and only.offsets == [1]
    results = await store.append_many([
        ("session:\u00e9t\u00e9", [ev("x", b'{"big":"' + b"y" * 70_000 + b'"}')]),
        ("session:plain", [ev("id\r\n\u2603", tricky)]),
    ], new_epoch="E")
    assert [r.offsets for r in results if isinstance(r, AppendResult)] == [[2], [1]]
    read = await store.read("session:\u00e9t\u00e9", 0, 10)
    assert [(e.body, e.priority) for e in read.events] == [
        (tricky, 3), (b'{"big":"' + b"y" * 70_000 + b'"}', 2)]
    dup = await store.append_many([("session:\u00e9t\u00e9", [ev("id\r\n\u2603", b'{"other":1}')])],
                                  new_epoch="E")
    assert isinstance(dup[0], AppendResult) and (dup[0].offsets, dup[0].duplicates) == ([1], [True])


# ---- streams: idempotency ------------------------------------------------------------------


async def test_duplicate_id_returns_first_offset(backend: Backend) -> None:
    store = streams(backend)
    await store.append("session:s", [ev("a", b'{"v":"first"}')], new_epoch="E")
    await store.append("session:s", [ev("b")], new_epoch="E")

    retry = await store.append("session:s", [ev("a", b'{"v":"retry"}')], new_epoch="E")
    assert (retry.epoch, retry.offsets, retry.duplicates) == ("E", [1], [True])

    read = await store.read("session:s", 0, 100)
    assert read.top_offset == 2
    assert [(e.offset, e.body) for e in read.events] == [(1, b'{"v":"first"}'), (2, b'{"id":"b"}')]

    after = await store.append("session:s", [ev("c")], new_epoch="E")
    assert after.offsets == [3]  # a duplicate does not consume an offset


async def test_duplicate_within_one_batch(backend: Backend) -> None:
    store = streams(backend)
    result = await store.append("session:s", [ev("a"), ev("b"), ev("a"), ev("c")], new_epoch="E")

    assert result.offsets == [1, 2, 1, 3]
    assert result.duplicates == [False, False, True, False]
    assert offsets_of(await store.read("session:s", 0, 100)) == [1, 2, 3]


async def test_same_id_on_another_channel_is_not_a_duplicate(backend: Backend) -> None:
    store = streams(backend)
    await store.append("session:a", [ev("x"), ev("same")], new_epoch="E")
    other = await store.append("session:b", [ev("same")], new_epoch="E")

    assert (other.offsets, other.duplicates) == ([1], [False])


# ---- streams: reads ------------------------------------------------------------------------


async def fill(store: StreamStore, channel: str, n: int) -> None:
    await store.append(channel, [ev(f"m{i}") for i in range(1, n + 1)], new_epoch="E")


async def test_read_since_and_limit(backend: Backend) -> None:
    store = streams(backend)
    await fill(store, "session:s", 10)

    page = await store.read("session:s", 3, 4)
    assert offsets_of(page) == [4, 5, 6, 7]
    assert [e.body for e in page.events] == [b'{"id":"m%d"}' % i for i in range(4, 8)]
    assert (page.epoch, page.top_offset, page.first_offset) == ("E", 10, 1)

    assert offsets_of(await store.read("session:s", 0, 100)) == list(range(1, 11))
    assert offsets_of(await store.read("session:s", 8, 100)) == [9, 10]


async def test_read_at_top_is_empty_but_reports_position(backend: Backend) -> None:
    store = streams(backend)
    await fill(store, "session:s", 3)

    for since in (3, 50):
        read = await store.read("session:s", since, 10)
        assert (read.epoch, read.top_offset, read.first_offset, read.events) == ("E", 3, 1, [])


async def test_read_latest_returns_newest_oldest_first(backend: Backend) -> None:
    store = streams(backend)
    await fill(store, "session:s", 10)

    assert offsets_of(await store.read("session:s", 0, 3, latest=True)) == [8, 9, 10]
    assert offsets_of(await store.read("session:s", 8, 5, latest=True)) == [9, 10]
    assert offsets_of(await store.read("session:s", 0, 100, latest=True)) == list(range(1, 11))


async def test_read_with_zero_limit_returns_no_events(backend: Backend) -> None:
    store = streams(backend)
    await fill(store, "session:s", 3)

    for latest in (False, True):
        read = await store.read("session:s", 0, 0, latest=latest)
        assert (read.top_offset, read.events) == (3, [])


async def test_read_unknown_channel(backend: Backend) -> None:
    read = await streams(backend).read("session:never", 0, 10)
    assert read == ReadResult(epoch="", top_offset=0, first_offset=0, events=[])
    latest = await streams(backend).read("session:never", 0, 10, latest=True)
    assert latest == ReadResult(epoch="", top_offset=0, first_offset=0, events=[])


async def test_max_len_trims_oldest_and_first_offset_follows(backend: Backend) -> None:
    limits = StreamLimits(max_len=5, ttl_s=3_600.0, meta_ttl_s=7_200.0, idempotency_window_s=300.0)
    store = build_stream_store(backend, limits)
    await fill(store, "session:s", 8)

    read = await store.read("session:s", 0, 100)
    assert (read.top_offset, read.first_offset) == (8, 4)
    assert offsets_of(read) == [4, 5, 6, 7, 8]

    appended = await store.append("session:s", [ev("m9"), ev("m10")], new_epoch="E")
    assert appended.trimmed == 2  # counted for history_trimmed_events_total
    again = await store.append("session:s", [ev("m10")], new_epoch="E")
    assert (again.duplicates, again.trimmed) == ([True], 0)
    read = await store.read("session:s", 2, 100)
    assert (read.epoch, read.top_offset, read.first_offset) == ("E", 10, 6)
    assert offsets_of(read) == [6, 7, 8, 9, 10]


# ---- streams: a store that lost its data ---------------------------------------------------


async def test_lost_store_gives_a_new_epoch(backend: Backend) -> None:
    store = streams(backend)
    before = await store.append("session:s", [ev("a"), ev("b")], new_epoch="epoch-old")
    assert before.epoch == "epoch-old"

    await lose_data(backend)
    gone = await store.read("session:s", 0, 10)
    assert (gone.epoch, gone.top_offset, gone.events) == ("", 0, [])

    after = await store.append("session:s", [ev("a")], new_epoch="epoch-new")
    assert (after.epoch, after.offsets, after.duplicates) == ("epoch-new", [1], [False])
    again = await store.append("session:s", [ev("c")], new_epoch="epoch-newer")
    assert (again.epoch, again.offsets) == ("epoch-new", [2])


# ---- an unreachable store ------------------------------------------------------------------


async def store_calls(backend: Backend) -> dict[str, Callable[[], Awaitable[object]]]:
    members = build_membership_store(backend)
    owners = build_ownership_store(backend, ttl_s=60.0)
    stream_store = streams(backend)
    return {
        "register": lambda: members.register("router", "r1", "a1", 30.0),
        "deregister": lambda: members.deregister("router", "r1"),
        "members": lambda: members.members("router"),
        "ping": members.ping,
        "add_edge": lambda: owners.add_edge("e1", ["session:s"]),
        "remove_edge": lambda: owners.remove_edge("e1", ["session:s"]),
        "edges_of": lambda: owners.edges_of("session:s"),
        "edges_of_many": lambda: owners.edges_of_many(["session:s", "session:t"]),
        "append": lambda: stream_store.append("session:s", [ev("a")], new_epoch="E"),
        "append_many": lambda: stream_store.append_many([("session:s", [ev("a")])], new_epoch="E"),
        "read": lambda: stream_store.read("session:s", 0, 10),
        "read_latest": lambda: stream_store.read("session:s", 0, 10, latest=True),
    }


async def assert_all_unavailable(target: Backend, timeout_s: float) -> None:
    for name, call in (await store_calls(target)).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            await call()
        assert time.monotonic() - started < timeout_s, f"{name} took too long to fail"


async def test_unreachable_store_raises_store_unavailable(
    backend: Backend, key_prefix: str, tu: float,
) -> None:
    if backend.memory is not None:
        backend.memory.available = False
        await assert_all_unavailable(backend, 1.0 * tu)
        backend.memory.available = True
        await build_membership_store(backend).ping()  # and it recovers
        return
    closed = open_backend(settings_for(
        f"redis://127.0.0.1:{free_port()}/0", key_prefix, tu, store_timeout_s=0.3 * tu,
    ))
    if id(backend) in _PIPED:
        _PIPED.add(id(closed))
    try:
        await assert_all_unavailable(closed, 3.0 * tu)
    finally:
        _PIPED.discard(id(closed))
        await closed.aclose()


# ---- DragonflyDB adapter only: timeouts, key layout, a real restart ------------------------


async def test_dragonfly_append_many_survives_a_store_that_forgot_its_scripts(
    redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    backend = open_backend(settings_for(redis_server.url, key_prefix, tu))
    try:
        store = streams(backend)
        await store.append_many([("session:x", [ev("x1")]), ("session:y", [ev("y1")])], new_epoch="E")
        await backend.redis.script_flush()  # as after a store restart or failover
        results = await store.append_many([("session:x", [ev("x2")]), ("session:y", [ev("y2")])],
                                          new_epoch="E")
        assert [r.offsets for r in results if isinstance(r, AppendResult)] == [[2], [2]]
    finally:
        await lose_data(backend)
        await backend.aclose()


async def test_dragonfly_batched_scripts_survive_a_store_that_forgot_them(
    redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    """Ownership and presence batches run their scripts by hash in a pipeline: after the store
    forgot its scripts, the next batch loads the script and is applied, not failed."""
    backend = open_backend(settings_for(redis_server.url, key_prefix, tu))
    try:
        owners = build_ownership_store(backend, ttl_s=60.0)
        presence = build_presence_store(backend)
        await owners.add_edge("e1", ["session:a"])
        await presence.update("e1", {"session:a": {"u1": 1}}, 30.0)
        await backend.redis.script_flush()

        await owners.add_edge("e2", ["session:a", "session:b"])
        changes = await presence.update("e1", {"session:a": {"u2": 1}, "session:b": {"u1": 1}}, 30.0)

        assert await owners.edges_of("session:a") == {"e1", "e2"}
        assert await owners.edges_of("session:b") == {"e2"}
        assert {c: ch.joined for c, ch in changes.items()} == {"session:a": ("u2",), "session:b": ("u1",)}
    finally:
        await lose_data(backend)
        await backend.aclose()


async def test_dragonfly_full_pool_waits_and_then_answers_busy_not_unavailable(
    redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    # One pooled connection: 40 concurrent appends wait their turn (a generous wait), and all
    # are stored; with a wait too short to get the connection, the extra calls fail as busy.
    patient = open_backend(settings_for(redis_server.url, key_prefix, tu, store_max_connections=1,
                                        store_pool_wait_s=5.0 * tu))
    hasty = open_backend(settings_for(redis_server.url, key_prefix, tu, store_max_connections=1,
                                      store_pool_wait_s=0.0001))
    try:
        store = build_stream_store(patient, LIMITS)
        results = await asyncio.gather(*(
            store.append("session:pool", [ev(f"m{i}")], new_epoch="E") for i in range(40)))
        assert sorted(r.offsets[0] for r in results) == list(range(1, 41))

        store = build_stream_store(hasty, LIMITS)
        outcomes = await asyncio.gather(*(
            store.append("session:pool", [ev(f"n{i}")], new_epoch="E") for i in range(40)),
            return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors, "one connection served 40 concurrent calls without any waiting"
        assert all(isinstance(e, StoreBusyError) for e in errors), errors[:3]
        assert not any(isinstance(e, StoreUnavailableError) for e in errors)
    finally:
        await lose_data(patient)
        await patient.aclose()
        await hasty.aclose()


async def test_dragonfly_pool_grows_without_looking_up_package_metadata(
    redis_server: RedisServer, key_prefix: str, tu: float, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py reads its own version from the installed packages' metadata for every new
    # connection unless told it (0.4 ms each): a pool growing in a storm paid it per connection.
    backend = open_backend(settings_for(redis_server.url, key_prefix, tu, store_max_connections=8))
    try:
        def no_lookup(name: str) -> str:
            raise AssertionError(f"package metadata read for {name!r} on a new connection")

        before = len(await backend.redis.client_list())  # the pool's first connection
        monkeypatch.setattr(importlib.metadata, "version", no_lookup)
        store = streams(backend)
        results = await asyncio.gather(*(  # concurrent calls: the pool opens several connections
            store.append(f"session:grow{i}", [ev(f"g{i}")], new_epoch="E") for i in range(8)))
        assert [r.offsets for r in results] == [[1]] * 8
        assert len(await backend.redis.client_list()) > before, "the pool did not grow: nothing proven"
    finally:
        await lose_data(backend)
        await backend.aclose()


async def test_dragonfly_store_that_does_not_answer_times_out(key_prefix: str, tu: float) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                pass  # accept and never answer, like a hung store
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = open_backend(settings_for(
        f"redis://127.0.0.1:{port}/0", key_prefix, tu, store_timeout_s=0.2 * tu,
    ))
    try:
        calls = await store_calls(hung)
        for name in ("ping", "append", "add_edge"):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await calls[name]()
            assert time.monotonic() - started < 3.0 * tu, f"{name} ignored store_timeout_s"
    finally:
        await hung.aclose()
        server.close()
        await server.wait_closed()


async def test_dragonfly_keys_carry_prefix_and_channel_hash_tag(
    redis_server: RedisServer, key_prefix: str, tu: float,
) -> None:
    backend = open_backend(settings_for(redis_server.url, key_prefix, tu))
    try:
        await streams(backend).append(
            "session:s1", [ev("a"), ev("b")], new_epoch="E",
        )
        await build_ownership_store(backend, ttl_s=60.0).add_edge("e1", ["session:s1"])
        await build_membership_store(backend).register("router", "r1", "a1", 30.0)

        keys = sorted([k.decode() async for k in backend.redis.scan_iter(match=f"{key_prefix}:*")])
        channel_keys = [k for k in keys if "{members:" not in k]
        assert len(channel_keys) == 5  # meta, stream, two idempotency keys, edges
        assert all(k.startswith(f"{key_prefix}:{{session:s1}}:") for k in channel_keys)
        assert {k for k in keys if "{members:" in k} == {
            f"{key_prefix}:{{members:router}}:z", f"{key_prefix}:{{members:router}}:h",
        }
        for key in channel_keys:  # nothing lives forever
            assert await backend.redis.pttl(key) > 0
        await lose_data(backend)
    finally:
        await backend.aclose()


async def test_dragonfly_restart_keeps_or_loses_the_epoch(key_prefix: str, tu: float) -> None:
    with RedisServer() as server:
        backend = open_backend(settings_for(server.url, key_prefix, tu))
        try:
            store = streams(backend)
            await store.append("session:s", [ev("a"), ev("b")], new_epoch="E1")

            # In a thread, so the loop sees the pooled connections drop as it would in production.
            await asyncio.to_thread(server.restart, keep_data=True)  # same data, same port
            kept = await store.append("session:s", [ev("c"), ev("a")], new_epoch="E2")
            assert (kept.epoch, kept.offsets, kept.duplicates) == ("E1", [3, 1], [False, True])

            await asyncio.to_thread(server.kill)
            with pytest.raises(StoreUnavailableError):
                await store.append("session:s", [ev("d")], new_epoch="E2")

            await asyncio.to_thread(server.restart, keep_data=False)  # the store lost everything
            assert (await store.read("session:s", 0, 10)).epoch == ""
            lost = await store.append("session:s", [ev("d")], new_epoch="E2")
            assert (lost.epoch, lost.offsets) == ("E2", [1])
        finally:
            await backend.aclose()
