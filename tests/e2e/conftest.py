"""End-to-end fixtures: the whole cluster as real processes on 127.0.0.1 (what `switchboard dev`
starts), reached only through the public WebSocket and HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from switchboard_client import Publisher, SwitchboardClient

from services.common.auth import mint_token
from services.devcluster import DevCluster

ClientFactory = Callable[..., "AsyncIterator[SwitchboardClient]"]


def _cluster(tmp: Path, **kw: object) -> DevCluster:
    env = {"SWITCHBOARD_LOG_JSON": "true", "SWITCHBOARD_AUTH_TIMEOUT_S": "2",
           "SWITCHBOARD_ALLOW_ANY_SESSION": "false",
           # Tests that push thousands of messages from one client are not about the rate limit;
           # test_rate_limit.py runs with real limits.
           "SWITCHBOARD_CLIENT_RATE_PER_S": "1000000", "SWITCHBOARD_CLIENT_BURST": "1000000"}
    env.update(kw.pop("env", {}))  # type: ignore[arg-type]
    return DevCluster(port=0, workdir=tmp, env=env, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """Two edges, two routers, one history, one redis-server: shared by a test module."""
    c = _cluster(tmp_path_factory.mktemp("cluster"))
    with c:
        yield c


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., DevCluster]]:
    """A cluster of its own for tests that kill or add processes."""
    made: list[DevCluster] = []

    def make(**kw: object) -> DevCluster:
        c = _cluster(tmp_path / f"c{len(made)}", **kw)
        made.append(c)
        try:
            c.start()
        except BaseException:
            c.stop()
            raise
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def sid() -> str:
    return "s-" + uuid.uuid4().hex[:10]


def token_for(cluster: DevCluster, sub: str, sessions: list[str] = (), scopes: list[str] = (),  # type: ignore[assignment]
              ttl_s: float = 600) -> str:
    return mint_token(cluster.jwt_secret, sub, sessions=sessions, scopes=scopes, ttl_s=ttl_s)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., SwitchboardClient]]:
    """Factory of connected-later clients; every one is closed at the end."""
    made: list[SwitchboardClient] = []

    def make(url: str, token: str, **kw: object) -> SwitchboardClient:
        c = SwitchboardClient(url, token, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture
async def publisher(cluster: DevCluster) -> AsyncIterator[Publisher]:
    edge = cluster.by_role("edge")[0]
    p = Publisher(f"http://127.0.0.1:{edge.port}", token_for(cluster, "backend", scopes=["publish"]))
    yield p
    await p.aclose()


def chat_url(cluster: DevCluster, edge: int, session_id: str, prefix: str = "/api") -> str:
    return f"ws://127.0.0.1:{cluster.by_role('edge')[edge].port}{prefix}/ws/chat/{session_id}"


async def collect(client: SwitchboardClient, n: int, types: set[str], timeout_s: float) -> list[dict]:  # type: ignore[type-arg]
    """The next n events of the given types (others are skipped)."""
    out = []
    while len(out) < n:
        ev = await client.next_event(timeout_s)
        if ev.get("type") in types:
            out.append(ev)
    return out
