"""Run the whole cluster on one machine as real processes: what `switchboard dev` starts.

Also the harness of the end-to-end tests, which kill, restart and add processes through it.
Every process is started in its own session and stopped by its pid: SIGTERM, then SIGKILL
after a bounded wait. Nothing is killed by name.

Supervision is opt-in (`switchboard dev` runs `supervise()`): a process that dies without
being stopped is started again on the same port and node id, with exponential backoff. Tests
that kill processes on purpose do not supervise, so what they kill stays dead until they say.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from services.common.settings import DEV_JWT_SECRET, DEV_SERVICE_TOKEN

HOST = "127.0.0.1"
log = structlog.get_logger("switchboard.dev")


# Listening ports are picked below Linux's default ephemeral range (32768-60999): a port the
# kernel hands out with bind(0) is free now but can be taken by any outgoing connection before
# the process that was given it binds it (a connection storm opens thousands). Handed-out ports
# are not handed out again by this process.
PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()
_rng = random.Random()


def reserve_ports(ports: range) -> None:
    """Never hand out these ports: they were asked for (an edge's `--port`), and a history or
    router process started before the edges must not take one."""
    _handed_out.update(ports)


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` with nothing bound to it now, outside the ephemeral range."""
    for _ in range(200):
        port = _rng.randint(*PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the range is crowded: let the kernel choose
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


def wait_until(predicate: object, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def print_banner(edge_urls: list[str], store: str, secret: str, logs: str,
                 processes: list[str] | None = None) -> None:
    """What `switchboard dev` prints once the cluster is up: where to connect, a token, and
    (when the tiers are processes) each process with its pid and metrics URL."""
    from services.common.auth import mint_token

    token = mint_token(secret, "dev-user", scopes=["publish"], ttl_s=24 * 3600)
    lines = ["", "Switchboard dev cluster is up.", f"  store:  {store}"]
    lines += [f"  edge:   {u}/api/ws/chat/{{session_id}}   ({u.replace('ws://', 'http://')})"
              for u in edge_urls]
    lines += [f"  {line}" for line in processes or ()]
    lines += [f"  logs:   {logs}", f"  token:  {token}",
              "  (user dev-user, any session, publish scope, valid 24 h; development secret)",
              "Ctrl-C stops every process.", ""]
    print("\n".join(lines), flush=True)


def find_redis() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


@dataclass
class Proc:
    role: str
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0  # where /metrics is served (an edge: its HTTP port; the store: none)

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.popen = subprocess.Popen(
                self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics" if self.metrics_port else ""

    def again(self) -> Proc:
        """The same process (command, port, node id, log) started anew."""
        return Proc(self.role, self.name, self.argv, self.env, self.port, self.log_path,
                    metrics_port=self.metrics_port).start()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        else:
            self.popen.wait(timeout=grace_s)

    def kill(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=10)


@dataclass
class DevCluster:
    edges: int = 2
    routers: int = 2
    histories: int = 1
    port: int = 18000
    store_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra SWITCHBOARD_* settings
    workdir: Path | None = None
    procs: list[Proc] = field(default_factory=list)
    redis: Proc | None = None
    stopping: bool = False
    _counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.port:
            reserve_ports(range(self.port, self.port + self.edges))
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="switchboard-dev-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def jwt_secret(self) -> str:
        return self.env.get("SWITCHBOARD_JWT_SECRET") or os.environ.get("SWITCHBOARD_JWT_SECRET") or DEV_JWT_SECRET

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("SWITCHBOARD_JWT_SECRET", DEV_JWT_SECRET)
        env.setdefault("SWITCHBOARD_SERVICE_TOKEN", DEV_SERVICE_TOKEN)
        env.setdefault("SWITCHBOARD_ALLOW_ANY_SESSION", "true")
        env.update(self.env)
        assert self.store_url is not None
        env["SWITCHBOARD_STORE_URL"] = self.store_url
        return env

    # ---- processes -------------------------------------------------------------------------

    def start_store(self) -> None:
        binary = find_redis()
        if binary is None:
            raise RuntimeError("no redis-server or valkey-server on PATH")
        port = free_port()
        assert self.workdir is not None
        # A save point makes SIGTERM write the data file, so a graceful restart keeps the data.
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "3600 1", "--appendonly", "no",
                "--dir", str(self.workdir), "--dbfilename", "store.rdb", "--daemonize", "no",
                "--protected-mode", "yes", "--loglevel", "warning"]
        self.redis = Proc("store", "store", argv, dict(os.environ), port,
                          self.workdir / "store.log").start()
        wait_until(lambda: tcp_open(port), 10, "redis-server", self.redis.popen)
        self.store_url = f"redis://{HOST}:{port}/0"

    def spawn(self, role: str, port: int | None = None, node_id: str | None = None,
              metrics_port: int | None = None, env: dict[str, str] | None = None) -> Proc:
        """Start one process; `env` adds settings of its own (e.g. an edge that forces gRPC)."""
        n = self._counters[role] = self._counters.get(role, 0) + 1
        name = node_id or f"{role}-{n}"
        port = port or free_port()
        own, env = env or {}, self.base_env()
        env.update(own)
        env["SWITCHBOARD_NODE_ID"] = name
        env["SWITCHBOARD_PORT"] = str(port)
        if role == "edge":
            metrics_port = port  # the edge serves /metrics on its HTTP port
        else:
            metrics_port = metrics_port or free_port()
            env["SWITCHBOARD_METRICS_PORT"] = str(metrics_port)
        assert self.workdir is not None
        argv = [sys.executable, "-m", "services.cli", role]
        proc = Proc(role, name, argv, env, port, self.workdir / f"{name}.log",
                    metrics_port=metrics_port).start()
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, timeout_s: float = 30.0) -> None:
        if proc.role == "edge":
            wait_until(lambda: http_ok(f"http://{HOST}:{proc.port}/readyz"), timeout_s,
                       proc.name, proc.popen)
        else:
            wait_until(lambda: tcp_open(proc.port), timeout_s, proc.name, proc.popen)

    def start(self, timeout_s: float = 30.0) -> None:
        if self.store_url is None:
            self.start_store()
        started = [self.spawn("history") for _ in range(self.histories)]
        started += [self.spawn("router") for _ in range(self.routers)]
        for p in started:
            self.wait_ready(p, timeout_s)
        edges = [self.spawn("edge", port=self.port + i if self.port else None)
                 for i in range(self.edges)]
        for p in edges:
            self.wait_ready(p, timeout_s)

    def restart(self, proc: Proc, *, kill: bool = False, wait: bool = True) -> Proc:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start the same node on the same port."""
        proc.kill() if kill else proc.stop()
        self.procs.remove(proc)
        new = self.spawn(proc.role, port=proc.port, node_id=proc.name, metrics_port=proc.metrics_port,
                         env=proc.env)  # its own settings too
        if wait:
            self.wait_ready(new)
        return new

    def stop_store(self, *, save: bool) -> None:
        """Stop the store; with save=True it writes its data first (SIGTERM with a save point)."""
        assert self.redis is not None and self.workdir is not None
        if save:
            self.redis.stop()
        else:
            self.redis.kill()
            (self.workdir / "store.rdb").unlink(missing_ok=True)

    def start_store_again(self) -> None:
        """Start the store on its old port, loading its data file if one was saved."""
        assert self.redis is not None
        port = self.redis.port
        self.redis = self.redis.again()
        wait_until(lambda: tcp_open(port), 10, "redis-server", self.redis.popen)

    def by_role(self, role: str) -> list[Proc]:
        return [p for p in self.procs if p.role == role and p.alive]

    def edge_urls(self) -> list[str]:
        return [f"ws://{HOST}:{p.port}" for p in self.by_role("edge")]

    def describe(self) -> list[str]:
        """One line per tier process: name, pid, port and metrics URL (the dev banner)."""
        return [f"{p.name:<10} pid {p.pid:<7} port {p.port:<5}  metrics {p.metrics_url}"
                for p in sorted(self.procs, key=lambda p: ("edge", "router", "history").index(p.role))]

    def supervise(self, keep_going: Callable[[], bool] = lambda: True, poll_s: float = 0.2) -> None:
        """Restart every process (the store too) that dies without being stopped, on the same
        port and node id, until keep_going() is false or stop() is called."""
        supervisor = Supervisor(self)
        while keep_going() and not self.stopping:
            supervisor.check(time.monotonic())
            time.sleep(poll_s)

    def stop(self) -> None:
        """Edges first (clients move away), then routers, history, and the store last."""
        self.stopping = True
        for role in ("edge", "router", "history"):
            for p in [p for p in self.procs if p.role == role]:
                p.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> DevCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # up this long: the next exit starts the backoff from the beginning


@dataclass
class _Watch:
    started: float
    attempt: int = 0            # restarts since the process was last stable
    restart_at: float | None = None


class Supervisor:
    """Restarts dead processes of a cluster, with exponential backoff per process."""

    def __init__(self, cluster: DevCluster) -> None:
        self._cluster = cluster
        self._watch: dict[str, _Watch] = {}

    def check(self, now: float) -> None:
        c = self._cluster
        for proc in [*c.procs, *([c.redis] if c.redis is not None else [])]:
            w = self._watch.setdefault(proc.name, _Watch(started=now))
            if proc.alive:
                if w.attempt and now - w.started >= STABLE_AFTER_S:
                    w.attempt = 0
                continue
            if w.restart_at is None:
                w.attempt += 1
                delay = min(BACKOFF_FIRST_S * 2 ** (w.attempt - 1), BACKOFF_MAX_S)
                w.restart_at = now + delay
                code = proc.popen.returncode if proc.popen is not None else None
                log.warning("tier_exited", name=proc.name, pid=proc.pid, exit_code=code,
                            attempt=w.attempt, restart_in_s=delay)
            elif now >= w.restart_at and not c.stopping:
                self._restart(proc)
                w.started, w.restart_at = now, None
                log.warning("tier_restarted", name=proc.name, pid=self._current(proc).pid,
                            port=proc.port, attempt=w.attempt)

    def _restart(self, proc: Proc) -> None:
        c = self._cluster
        if proc is c.redis:
            c.redis = proc.again()
            return
        c.procs[c.procs.index(proc)] = proc.again()

    def _current(self, proc: Proc) -> Proc:
        c = self._cluster
        if proc.role == "store" and c.redis is not None:
            return c.redis
        return next((p for p in c.procs if p.name == proc.name), proc)
