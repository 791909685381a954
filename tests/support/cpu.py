"""Processes that compete for one CPU, so that a test can see them wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SPIN = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"


@contextmanager
def spinners_on_one_cpu(n: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`n` processes that keep the same CPU busy (each runs about 1/n of the time and waits the
    rest); killed and reaped on exit, after at most 20 s on their own."""
    cpu = min(os.sched_getaffinity(0))
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
             for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
