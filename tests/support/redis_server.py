"""A real `redis-server` (or `valkey-server`) on a free loopback port, for integration tests.

Redis 7 is DragonflyDB's stand-in where DragonflyDB cannot be had. The server runs in the
foreground as our child, without automatic snapshots or AOF, in its own temporary directory.
`restart(keep_data=True)` runs `SAVE` first and comes back on the same port with the same data
(the RDB file in that directory); `keep_data=False` deletes the RDB file, so the store comes
back empty, as after losing its data.

When `SWITCHBOARD_TEST_REDIS_URL` is set, `RedisServer.from_env()` wraps that URL instead of
starting a process; such a server cannot be stopped, killed or restarted.

No Docker engine is assumed: there is deliberately no testcontainers path here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from tests.support import free_port

REDIS_URL_ENV = "SWITCHBOARD_TEST_REDIS_URL"
BINARIES = ("redis-server", "valkey-server")
RDB_FILE = "dump.rdb"


class RedisServerError(RuntimeError):
    """The server could not be started, did not answer, or cannot do what was asked."""


def find_binary() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise RedisServerError(f"none of {', '.join(BINARIES)} found on PATH (or set {REDIS_URL_ENV})")


class RedisServer:
    """One redis-server child process; use as a context manager or call start()/close()."""

    def __init__(
        self, *, binary: str | None = None, start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0, external_url: str | None = None,
    ) -> None:
        self._external_url = external_url
        self._binary = binary
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: weakref.finalize[[subprocess.Popen[bytes]], RedisServer] | None = None

    @classmethod
    def from_env(cls) -> RedisServer:
        """A server for the URL in SWITCHBOARD_TEST_REDIS_URL, or a new local one (not started)."""
        url = os.environ.get(REDIS_URL_ENV, "").strip()
        return cls(external_url=url) if url else cls()

    # ---- properties ------------------------------------------------------------------------

    @property
    def external(self) -> bool:
        return self._external_url is not None

    @property
    def url(self) -> str:
        if self._external_url is not None:
            return self._external_url
        if not self._port:
            raise RedisServerError("the server has not been started")
        return f"redis://127.0.0.1:{self._port}/0"

    @property
    def port(self) -> int:
        self._require_local("port")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def rdb_path(self) -> Path:
        self._require_local("rdb_path")
        assert self._dir is not None
        return self._dir / RDB_FILE

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start on a free port (another one if it was taken meanwhile) and wait for PING."""
        if self.external:
            return self
        if self.running:
            raise RedisServerError("already running")
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="switchboard-redis-"))
        last: RedisServerError | None = None
        for _ in range(3):
            try:
                self._spawn(self._port or free_port())
                return self
            except RedisServerError as e:  # most likely a port race; try another port
                last = e
                self._port = 0
        assert last is not None
        raise last

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait. No snapshot is written (`--save ""`)."""
        self._require_local("stop")
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self._stop_timeout_s)
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL now: everything since the last SAVE is lost."""
        self._require_local("kill")
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=self._stop_timeout_s)
        self._forget_process()

    def restart(self, *, keep_data: bool) -> None:
        """Stop and start again on the same port.

        keep_data=True: SAVE (when running) and load that snapshot on start, so the data comes
        back. keep_data=False: the snapshot is deleted and the server comes back empty.
        """
        self._require_local("restart")
        if not self._port:
            raise RedisServerError("the server has not been started")
        if keep_data and self.running:
            self.command("SAVE")
        self.stop()
        if not keep_data:
            self.rdb_path.unlink(missing_ok=True)
        self._spawn(self._port)

    def close(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        if self.external:
            return
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- a tiny synchronous client (no event loop needed in fixtures) ------------------------

    def command(self, *args: str, timeout_s: float = 5.0) -> str:
        """Send one command and return its simple-string reply; error replies raise."""
        host, port = self._host_port()
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(_encode_command(args))
            line = _read_line(s)
        if line.startswith("-"):
            raise RedisServerError(f"{args[0]} failed: {line[1:]}")
        return line[1:]

    def ping(self, timeout_s: float = 1.0) -> bool:
        try:
            return self.command("PING", timeout_s=timeout_s) == "PONG"
        except (OSError, RedisServerError):
            return False  # refused, not listening yet, or -LOADING while it reads the RDB

    # ---- internals -------------------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        assert self._dir is not None
        binary = self._binary or find_binary()
        log = open(self._dir / "server.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                [
                    binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(self._dir), "--dbfilename", RDB_FILE,
                    "--daemonize", "no", "--logfile", "",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self._proc, self._port = proc, port
        # Safety net: never leave a server behind if a test run dies without teardown.
        self._reaper = weakref.finalize(self, _kill_quietly, proc)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                self._forget_process()
                raise RedisServerError(f"redis-server exited during start:\n{self._log_tail()}")
            if self.ping(timeout_s=0.5):
                return
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(
            f"redis-server did not answer PING within {self._start_timeout_s}s:\n{self._log_tail()}"
        )

    def _forget_process(self) -> None:
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        self._proc = None

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "server.log").read_text(errors="replace")[-2000:]
        return ""

    def _host_port(self) -> tuple[str, int]:
        if self._external_url is None:
            return "127.0.0.1", self._port
        from urllib.parse import urlsplit

        parts = urlsplit(self._external_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def _require_local(self, what: str) -> None:
        if self.external:
            raise RedisServerError(f"{what} is not available for the external {REDIS_URL_ENV}")


def _encode_command(args: tuple[str, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_line(s: socket.socket) -> str:
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("connection closed before a full reply")
        buf += chunk
    return buf.split(b"\r\n", 1)[0].decode(errors="replace")


def _kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
