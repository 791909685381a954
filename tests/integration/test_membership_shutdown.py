"""Membership's background loops stop when cancelled, whatever the store client makes of the
cancellation. redis-py can end a command cancelled mid-read with its own ConnectionError
("Connection closed by server"); a poll loop that takes that for an outage and polls on would
never end, and a router stopping would wait for it forever (seen as a 300 s CI timeout in
test_a_stopped_router_fails_over_and_the_edge_resyncs). Real redis-server."""

from __future__ import annotations

import asyncio
import random

from services.common.membership import LeaseKeeper, MemberWatcher
from services.common.settings import Settings
from services.common.store.factory import build_membership_store, open_backend
from tests.support.redis_server import RedisServer

ROUNDS = 200


async def test_watchers_and_keepers_cancelled_mid_poll_always_stop(redis_server: RedisServer, key_prefix: str,
                                                                   tu: float) -> None:
    backend = open_backend(Settings(store_url=redis_server.url, key_prefix=key_prefix))
    members = build_membership_store(backend)
    rng = random.Random(7)
    hung = 0
    try:
        for i in range(ROUNDS):
            # Polls and refreshes back to back, so that a cancellation often lands mid-command.
            watcher = MemberWatcher(members, "router", poll_s=0.0005)
            keeper = LeaseKeeper(members, "router", f"router-{i}", "127.0.0.1:1", ttl_s=5.0, refresh_s=0.0007)
            await watcher.start()
            await keeper.start()
            await asyncio.sleep(rng.uniform(0, 0.01))
            closing = [asyncio.create_task(watcher.aclose()), asyncio.create_task(keeper.aclose())]
            _, pending = await asyncio.wait(closing, timeout=3.0 * tu)
            if pending:
                hung += 1
                break  # the loop left running cannot be stopped from here
        assert hung == 0, f"a watcher or keeper did not stop within 3 s of aclose (round {i})"
        assert await members.members("router") == {}
    finally:
        await backend.aclose()
