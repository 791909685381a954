"""The `switchboard` command in the exact forms operators and scripts rely on."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest
import websockets

from services.common.settings import DEV_JWT_SECRET
from services.devcluster import HOST, free_port, http_ok, wait_until
from tests.support import descendants
from tests.support.redis_server import RedisServer

SWITCHBOARD = [sys.executable, "-m", "services.cli"]


def _free_pair() -> int:
    """A port p such that p and p + 1 are both free now."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(extra)
    return env


def _run_dev(args: list[str], env: dict[str, str], tu: float) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([*SWITCHBOARD, "dev", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60 * tu
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("dev did not come up:\n" + "".join(lines))


async def _chat_roundtrip(port_a: int, port_b: int, token: str, tu: float) -> None:
    async with websockets.connect(f"ws://{HOST}:{port_a}/api/ws/chat/cli") as a, \
            websockets.connect(f"ws://{HOST}:{port_b}/api/ws/chat/cli") as b:
        for ws in (a, b):
            await ws.send(json.dumps({"token": token, "session_id": "cli"}))
            assert json.loads(await ws.recv())["success"] is True
        await a.send(json.dumps({"type": "chat_message", "payload": {"content": "over the cluster"}}))
        while (ev := json.loads(await b.recv()))["type"] != "chat_message":
            pass
        assert ev["payload"]["content"] == "over the cluster" and ev["offset"] >= 1


@pytest.mark.parametrize("with_store", [True, False], ids=["--store", "own-redis"])
async def test_dev_runs_the_cluster_and_sigterm_stops_every_process(tu, with_store) -> None:
    port = _free_pair()
    with RedisServer() as redis:
        args = ["--edges", "2", "--routers", "2", "--port", str(port)]
        if with_store:
            args += ["--store", redis.url]
        proc, lines = _run_dev(args, _env(), tu)
        try:
            text = "".join(lines)
            assert f"ws://{HOST}:{port}/api/ws/chat/" in text and f"ws://{HOST}:{port + 1}/" in text
            token = re.search(r"token:\s+(\S+)", text).group(1)  # type: ignore[union-attr]
            assert jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"])["scope"] == "publish"
            children = descendants(proc.pid)
            assert len(children) >= (5 if with_store else 6)  # history, 2 routers, 2 edges (+redis)
            await _chat_roundtrip(port, port + 1, token, tu)
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60 * tu)
            proc.stdout.close()  # type: ignore[union-attr]
        assert rc == 0
        alive = [p for p in children if Path(f"/proc/{p}").exists()
                 and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()]
        assert alive == [], f"processes left running: {alive}"


async def test_dev_without_redis_runs_in_one_process(tu, tmp_path) -> None:
    # A PATH with python but no redis-server/valkey-server.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    port = free_port()
    proc, lines = _run_dev(["--edges", "1", "--routers", "2", "--port", str(port)],
                           _env(PATH=str(bindir)), tu)
    try:
        assert "in-memory store" in "".join(lines)
        assert descendants(proc.pid) == set()  # every tier runs inside this one process
        wait_until(lambda: http_ok(f"http://{HOST}:{port}/readyz"), 20 * tu, "single-process edge")
        token = re.search(r"token:\s+(\S+)", "".join(lines)).group(1)  # type: ignore[union-attr]
        await _chat_roundtrip(port, port, token, tu)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30 * tu)
        proc.stdout.close()  # type: ignore[union-attr]
    assert rc == 0


def test_token_command(tu) -> None:
    out = subprocess.run([*SWITCHBOARD, "token", "--sub", "alice", "--session", "s1", "--session", "s2",
                          "--scope", "publish", "--ttl", "60"],
                         env=_env(SWITCHBOARD_JWT_SECRET="x" * 40), capture_output=True, text=True,
                         timeout=30 * tu, check=True)
    claims = jwt.decode(out.stdout.strip(), "x" * 40, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["sessions"] == ["s1", "s2"]
    assert claims["scope"] == "publish" and 55 <= claims["exp"] - time.time() <= 61
    refused = subprocess.run([*SWITCHBOARD, "token", "--sub", "alice"], env=_env(),
                             capture_output=True, text=True, timeout=30 * tu)
    assert refused.returncode != 0 and "SWITCHBOARD_JWT_SECRET" in refused.stderr


@pytest.mark.parametrize("role", ["edge", "router", "history"])
def test_tiers_refuse_to_start_without_secrets(role, tu) -> None:
    out = subprocess.run([*SWITCHBOARD, role], env=_env(), capture_output=True, text=True, timeout=30 * tu)
    assert out.returncode != 0 and "SWITCHBOARD_JWT_SECRET" in out.stderr


async def test_publish_command(cluster, tu) -> None:
    port = cluster.by_role("edge")[0].port
    out = subprocess.run([*SWITCHBOARD, "publish", "--url", f"http://{HOST}:{port}", "--channel",
                          "session:cli-pub", "--type", "notification", "--payload", '{"text": "hi"}',
                          "--id", "cli-1"],
                         env=_env(SWITCHBOARD_JWT_SECRET=cluster.jwt_secret), capture_output=True,
                         text=True, timeout=30 * tu)
    assert out.returncode == 0, out.stderr
    ack = json.loads(out.stdout)
    assert ack["id"] == "cli-1" and ack["offset"] >= 1
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://{HOST}:{port}/api/v1/channels/session:cli-pub/history",
                           headers={"authorization": "Bearer " + jwt.encode(
                               {"sub": "svc", "scope": "publish", "exp": time.time() + 60},
                               cluster.jwt_secret, algorithm="HS256")})
    assert [e["id"] for e in r.json()["events"]] == ["cli-1"]
