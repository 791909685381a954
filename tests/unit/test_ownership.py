"""A router's view of channel ownership follows the live router set: the owner is the rendezvous
winner of the current set (remembered per channel), recomputed when the set changes or the
router drains."""

from __future__ import annotations

from services.common.sharding import owner_of
from services.common.store.base import Keys
from services.common.store.factory import Backend
from services.common.store.memory import memory_backend
from services.router.ownership import Ownership
from services.router.store.factory import build_ownership_store


def ownership(node_id: str, key_prefix: str) -> Ownership:
    url = f"memory://{key_prefix}"
    backend = Backend(url, Keys(key_prefix), memory=memory_backend(url))
    return Ownership(node_id, build_ownership_store(backend, 60.0), refresh_s=1.0)


def test_owners_follow_the_router_set_and_drain(key_prefix: str) -> None:
    own = ownership("r1", key_prefix)
    channels = [f"session:s{i}" for i in range(200)]
    assert all(own.owns(c) for c in channels)  # alone, it owns everything

    own.set_routers({"r1", "r2", "r3"})
    expected = {c: owner_of(c, {"r1", "r2", "r3"}) for c in channels}
    assert {c: own.owner(c) for c in channels} == expected
    assert {c: own.owner(c) for c in channels} == expected  # asked again: the same answer
    assert 0 < sum(own.owns(c) for c in channels) < len(channels)

    own.set_routers({"r1", "r2"})  # r3 left: its channels move, the others stay
    after = {c: own.owner(c) for c in channels}
    assert after == {c: owner_of(c, {"r1", "r2"}) for c in channels}
    assert all(after[c] == expected[c] for c in channels if expected[c] != "r3")

    own.drain()  # a draining router owns nothing while another router is live
    assert not any(own.owns(c) for c in channels)
    assert {own.owner(c) for c in channels} == {"r2"}
