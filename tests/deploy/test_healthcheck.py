"""`python -m services.healthcheck`, the image's HEALTHCHECK, against real tier processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.devcluster import DevCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def healthcheck(port: int, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SWITCHBOARD_PORT=str(port), SWITCHBOARD_HOST="0.0.0.0")
    return subprocess.run([sys.executable, "-m", "services.healthcheck", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    c = DevCluster(edges=1, routers=1, port=0, workdir=tmp_path_factory.mktemp("hc"),
                   env={"SWITCHBOARD_LOG_JSON": "true"})
    with c:
        yield c


@pytest.mark.parametrize("role", ["edge", "router", "history"])
def test_a_running_tier_is_healthy_whether_or_not_the_tier_is_named(cluster: DevCluster, role: str) -> None:
    (proc,) = cluster.by_role(role)
    detected = healthcheck(proc.port)
    assert detected.returncode == 0, detected.stderr
    named = healthcheck(proc.port, role)
    assert named.returncode == 0, named.stderr


def test_an_edge_is_not_taken_for_a_grpc_server_nor_the_reverse(cluster: DevCluster) -> None:
    (edge,) = cluster.by_role("edge")
    (router,) = cluster.by_role("router")
    assert healthcheck(edge.port, "router").returncode == 1
    assert healthcheck(router.port, "edge").returncode == 1


def test_nothing_listening_is_unhealthy() -> None:
    for args in ((), ("edge",), ("history",)):
        result = healthcheck(free_port(), *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "unhealthy" in result.stderr


def test_history_turns_unhealthy_when_its_store_goes_away(tmp_path: Path, tu: float) -> None:
    """History's gRPC health follows the store; the check reports NOT_SERVING as unhealthy."""
    c = DevCluster(edges=0, routers=0, port=0, workdir=tmp_path,
                   env={"SWITCHBOARD_LOG_JSON": "true", "SWITCHBOARD_STORE_TIMEOUT_S": "0.5"})
    with c:
        (history,) = c.by_role("history")
        assert healthcheck(history.port).returncode == 0
        c.stop_store(save=False)
        deadline = time.monotonic() + 30 * tu
        while healthcheck(history.port, "history").returncode == 0:
            assert time.monotonic() < deadline, "history still healthy 30 s after its store stopped"
            time.sleep(0.5)
        assert history.alive
