"""Helpers shared by the test suites: real services on loopback and the scaled time unit."""

from __future__ import annotations

import os
from pathlib import Path

from services import devcluster

TIME_SCALE_ENV = "SWITCHBOARD_TEST_TIME_SCALE"


def time_unit() -> float:
    """The factor that sizes every test timeout (env SWITCHBOARD_TEST_TIME_SCALE, default 1.0).

    Raise it on slow machines (CI under load, sanitizers) instead of editing timeouts.
    """
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{TIME_SCALE_ENV} must be positive, got {raw!r}")
    return value


def free_port() -> int:
    """A loopback TCP port with nothing bound to it right now (services.devcluster.free_port:
    outside the ephemeral range, so outgoing connections do not take it before it is bound)."""
    return devcluster.free_port("127.0.0.1")


def descendants(pid: int) -> set[int]:
    """Every descendant pid of pid (from /proc)."""
    out: set[int] = set()
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            frontier += list(kids - out)
            out |= kids
    return out
