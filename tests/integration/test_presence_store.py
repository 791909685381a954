"""Store contract for presence: the same tests against the in-memory and DragonflyDB adapters
(a real redis-server stands in for DragonflyDB); each test gets its own key prefix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common.settings import Settings
from services.common.store.factory import Backend, open_backend
from services.edge.store.base import PresenceChange
from services.edge.store.factory import build_presence_store

CH = "session:room"


@pytest.fixture(params=["memory", "dragonfly"])
async def backend(request: pytest.FixtureRequest, key_prefix: str, tu: float) -> AsyncIterator[Backend]:
    memory = request.param == "memory"
    url = f"memory://{key_prefix}" if memory else request.getfixturevalue("redis_server").url
    opened = open_backend(Settings(store_url=url, key_prefix=key_prefix, store_timeout_s=2.0 * tu))
    try:
        yield opened
        if opened.redis is not None:
            async for key in opened.redis.scan_iter(match=f"{key_prefix}:*", count=500):
                await opened.redis.unlink(key)
    finally:
        await opened.aclose()


async def test_first_connection_joins_and_last_one_leaves(backend: Backend) -> None:
    store = build_presence_store(backend)
    assert await store.update("e1", {CH: {"alice": 1}}, 30) == {CH: PresenceChange(("alice",), (), 1)}
    # a second connection of alice (on the same or another edge) is not a join
    assert await store.update("e1", {CH: {"alice": 2}}, 30) == {CH: PresenceChange((), (), 1)}
    assert await store.update("e2", {CH: {"alice": 1}}, 30) == {CH: PresenceChange((), (), 1)}
    assert (await store.read(CH)).users == {"alice": 3}

    assert await store.update("e1", {CH: {"alice": 0}}, 30) == {CH: PresenceChange((), (), 1)}
    assert await store.update("e2", {CH: {"alice": 0}}, 30) == {CH: PresenceChange((), ("alice",), 0)}
    assert (await store.read(CH)).users == {}
    # removing what is not there changes nothing
    assert await store.update("e2", {CH: {"alice": 0}}, 30) == {CH: PresenceChange((), (), 0)}


async def test_one_call_writes_many_channels_and_users(backend: Backend) -> None:
    store = build_presence_store(backend)
    got = await store.update("e1", {CH: {"a": 1, "b": 2}, "session:other": {"c": 1}}, 30)
    assert set(got[CH].joined) == {"a", "b"} and got[CH].count == 2
    assert got["session:other"] == PresenceChange(("c",), (), 1)
    assert (await store.read(CH)).users == {"a": 1, "b": 2}
    assert (await store.read("session:other")).users == {"c": 1}
    assert (await store.read("session:nobody")).users == {}


async def test_expired_entries_are_removed_once_and_reported_to_that_caller(backend: Backend, tu: float) -> None:
    store = build_presence_store(backend)
    ttl = 0.3 * tu
    await store.update("dead", {CH: {"bob": 1, "carol": 1}}, ttl)
    await store.update("live", {CH: {"carol": 1, "dave": 1}}, 60)
    await asyncio.sleep(ttl + 0.1 * tu)

    # Two edges race to notice: the first call removes and reports, the second sees nothing.
    first, second = await asyncio.gather(store.update("live", {CH: {"dave": 1}}, 60), store.read(CH))
    reports = [first[CH].left, second.left]
    assert sorted(reports, key=len) == [(), ("bob",)]  # carol still has a live connection
    assert (await store.read(CH)).users == {"carol": 1, "dave": 1}
    assert (await store.read(CH)).left == ()


async def test_renewing_keeps_entries_alive(backend: Backend, tu: float) -> None:
    store = build_presence_store(backend)
    ttl = 0.4 * tu
    await store.update("e1", {CH: {"alice": 1}}, ttl)
    for _ in range(4):
        await asyncio.sleep(ttl / 3)
        assert await store.update("e1", {CH: {"alice": 1}}, ttl) == {CH: PresenceChange((), (), 1)}
    assert (await store.read(CH)).users == {"alice": 1}


async def test_an_expired_entry_written_again_in_one_call_is_no_change(backend: Backend, tu: float) -> None:
    """An edge that stalled past its lease and renews: nobody left, nobody joined."""
    store = build_presence_store(backend)
    ttl = 0.2 * tu
    await store.update("e1", {CH: {"alice": 1}}, ttl)
    await asyncio.sleep(ttl + 0.1 * tu)
    assert await store.update("e1", {CH: {"alice": 1}}, 30) == {CH: PresenceChange((), (), 1)}


async def test_channels_are_independent(backend: Backend) -> None:
    store = build_presence_store(backend)
    await store.update("e1", {CH: {"alice": 1}}, 30)
    got = await store.update("e1", {"session:b": {"alice": 1}}, 30)
    assert got["session:b"] == PresenceChange(("alice",), (), 1)
    await store.update("e1", {CH: {"alice": 0}}, 30)
    assert (await store.read("session:b")).users == {"alice": 1}


async def test_dragonfly_presence_keys_carry_prefix_and_hash_tag(redis_server: object, key_prefix: str) -> None:
    opened = open_backend(Settings(store_url=redis_server.url, key_prefix=key_prefix))  # type: ignore[attr-defined]
    try:
        store = build_presence_store(opened)
        await store.update("e1", {CH: {"alice": 1}}, 30)
        keys = sorted([k.decode() async for k in opened.redis.scan_iter(match=f"{key_prefix}:*")])
        assert keys == [f"{key_prefix}:{{{CH}}}:presence:{s}" for s in ("c", "u", "z")]
        ttls = [await opened.redis.pttl(k) for k in keys]
        assert all(0 < t <= 90_000 for t in ttls)  # abandoned keys go away
        for k in keys:
            await opened.redis.unlink(k)
    finally:
        await opened.aclose()
