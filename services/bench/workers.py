"""The parent's side of the load workers: start them, send commands, gather replies, stop them by pid."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import TypeVar

from services.bench.loadgen import worker_main
from services.bench.procstats import cpu_seconds, wait_seconds
from services.bench.protocol import Close, Closed, Command, Failed, Reply, WorkerConfig

R = TypeVar("R", bound=Reply)


class WorkerError(RuntimeError):
    """A worker failed, or did not answer in time."""


class WorkerPool:
    def __init__(self) -> None:
        self.procs: list[SpawnProcess] = []
        self.pipes: list[Connection] = []

    def start(self, configs: list[WorkerConfig]) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited sockets, pipes or handlers
        for cfg in configs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child_end, cfg), name=f"bench-worker-{cfg.wid}")
            proc.start()
            child_end.close()
            self.procs.append(proc)
            self.pipes.append(parent_end)

    @property
    def size(self) -> int:
        return len(self.pipes)

    def send(self, wid: int, cmd: Command) -> None:
        self.pipes[wid].send(cmd)

    def broadcast(self, cmd: Command) -> None:
        for pipe in self.pipes:
            pipe.send(cmd)

    def gather(self, kind: type[R], timeout_s: float) -> list[R]:
        deadline = time.monotonic() + timeout_s
        out: list[R] = []
        for wid, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"worker {wid} did not answer {kind.__name__} within {timeout_s:.0f} s")
            reply = pipe.recv()
            if isinstance(reply, Failed):
                raise WorkerError(f"worker {wid} failed:\n{reply.error}")
            if not isinstance(reply, kind):
                raise WorkerError(f"worker {wid}: expected {kind.__name__}, got {type(reply).__name__}")
            out.append(reply)
        return out

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.procs if p.pid is not None)

    def wait_seconds(self) -> float | None:
        """Time the workers waited for a CPU so far, per worker on average (None: not known)."""
        waits = [wait_seconds(p.pid) for p in self.procs if p.pid is not None]
        known = [w for w in waits if w is not None]
        return sum(known) / len(known) if known else None

    def stop(self, grace_s: float = 3.0) -> None:
        """Ask every worker to close its connections; then SIGTERM, then SIGKILL, each by pid."""
        signals: list[signal.Signals | None] = [None, signal.SIGTERM, signal.SIGKILL]
        try:
            self.broadcast(Close())
            self.gather(Closed, grace_s)
        except (OSError, WorkerError):
            signals.pop(0)  # a worker busy in a step does not read its pipe: no point waiting
        for sig in signals:
            for p in self.procs:
                if p.is_alive() and sig is not None and p.pid is not None:
                    os.kill(p.pid, sig)
            for p in self.procs:
                p.join(timeout=grace_s)
            if not any(p.is_alive() for p in self.procs):
                break
        for pipe in self.pipes:
            pipe.close()
        self.procs.clear()
        self.pipes.clear()
