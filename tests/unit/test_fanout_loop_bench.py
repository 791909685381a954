"""`bench/fanout_loop.py` measures the edge's own fan-out path (docs/performance.md cites it):
it must keep running against the current Hub and Connection, and every delivery must reach every
subscriber once (the script refuses to print a number otherwise)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_fanout_benchmark_runs_and_writes_each_delivery_once_per_subscriber() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.fanout_loop", "--rooms", "3", "--members", "4",
                          "--deliveries", "30", "--batch", "7", "--rounds", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["frames"] == 30 * 4
    assert result["writes"] < result["frames"]  # a connection's frames of one cork leave in one write
    assert result["us_per_delivery"] > 0
