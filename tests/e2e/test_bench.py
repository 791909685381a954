"""`switchboard bench` as a user runs it: a real subprocess against a real cluster, tiny sizes.

The numbers it measures are not asserted (no timed assertions); what is asserted is that its
accounting is right on a healthy cluster: every expected delivery arrives once and in order, the
counts match what was sent, and every server process has CPU and RSS figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.devcluster import DevCluster

pytestmark = pytest.mark.e2e

SWITCHBOARD = [sys.executable, "-m", "services.cli"]
ROOT = Path(__file__).resolve().parents[2]


def bench(args: list[str], timeout_s: float, **env: str) -> tuple[dict[str, Any], str, str]:
    """Run `switchboard bench ... --json`: (the JSON result, the table, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")} | env
    proc = subprocess.run([*SWITCHBOARD, "bench", *args, "--json", "-W", "2"], capture_output=True,
                          text=True, timeout=timeout_s, cwd=ROOT, env=full_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *table, last = proc.stdout.strip().splitlines()
    return json.loads(last), "\n".join(table), proc.stderr


def against(cluster: DevCluster) -> list[str]:
    """--url per edge and --pid per process of a running cluster."""
    args = [a for u in cluster.edge_urls() for a in ("--url", u)]
    args += [a for p in cluster.procs if p.popen for a in ("--pid", f"{p.name}={p.popen.pid}")]
    assert cluster.redis is not None and cluster.redis.popen is not None
    return [*args, "--pid", f"redis={cluster.redis.popen.pid}"]


def assert_clean(step: dict[str, Any], sent: int, receivers_per_message: int) -> None:
    assert step["sent"] == sent, step
    assert step["expected"] == sent * receivers_per_message
    assert step["received"] == step["expected"]
    assert step["loss"] == 0
    for key in ("duplicates", "out_of_order", "offset_duplicates", "offset_out_of_order", "connections_dropped"):
        assert step[key] == 0, (key, step)
    assert step["latency_ms"]["p50"] is not None and step["latency_ms"]["max"] >= step["latency_ms"]["p50"]


def assert_measured(servers: dict[str, Any], names: set[str]) -> None:
    procs = {p["name"]: p for p in servers["processes"]}
    assert set(procs) == names
    for p in procs.values():
        assert isinstance(p["cpu_s"], float | int) and p["cpu_s"] >= 0
        assert p["rss_kb"] > 0


CLUSTER_NAMES = {"edge-1", "edge-2", "router-1", "router-2", "history-1", "redis"}


def test_fanout_on_a_cluster_it_starts_counts_every_delivery_and_stops_the_cluster(tu: float) -> None:
    # 40 connections in 4 sessions of 10 (alternating over 2 edges), one publisher per session:
    # 200 msgs/s for 2 s = 400 messages, each delivered to the 10 members of its session.
    result, table, stderr = bench(["fanout", "--start", "-C", "40", "-R", "4", "-P", "4", "-M", "200",
                                   "-T", "2"], timeout_s=180 * tu)
    assert result["connect"]["established"] == 40
    assert result["sessions_spanning_edges"] == 4
    (step,) = result["steps"]
    assert_clean(step, sent=400, receivers_per_message=10)
    assert_measured(step["servers"], CLUSTER_NAMES)
    assert step["servers"]["cpu_us_per_delivery"] > 0
    assert 0 < step["servers"]["machine_busy_pct"] <= 100  # the load generator alone keeps it above 0
    # the edges' own counters (/api/v1/stats) saw at least the frames the clients counted
    edges = result["edges_stats"]
    assert len(edges) == 2 and sum(e["messages_out"] for e in edges) >= step["received"]
    assert sum(e["messages_in"] for e in edges) >= step["sent"]
    assert "deliv/s" in table and "machine %" in table and "highest sustained rate" in table
    # the load generator's own loop lag in the step: sampled every 10 ms for 2 s by each worker
    assert step["loadgen_loop_lag_ms"]["p99"] is not None and "gen lag ms" in table
    # and each server process's, read from its /metrics before and after the step (redis has none)
    lags = step["server_loop_lag_p99_ms"]
    assert set(lags) == CLUSTER_NAMES - {"redis"} and all(v is not None and v > 0 for v in lags.values())
    # and the cluster's own part of the latency: each edge's publish accepted -> frame written
    inside = step["edge_delivery_p99_ms"]
    assert set(inside) == {"edge-1", "edge-2"} and all(v is not None and v > 0 for v in inside.values())
    assert "edge-1 deliv" in table and "router-1 lag" in table and "gen lag" in table
    # and how long each process waited for a CPU in the step (the kernel's run delay)
    waits = {p["name"]: p["wait_pct"] for p in step["servers"]["processes"]}
    assert set(waits) == CLUSTER_NAMES and all(w is not None and w >= 0 for w in waits.values())
    assert step["loadgen_wait_pct"] is not None and "edge-1 wait" in table and "gen wait" in table
    assert 0 < step["loadgen_cpu_pct"] <= 100 and "gen CPU" in table
    assert "edge-1" in table
    assert "cluster up" in stderr and "step 1" in stderr
    # the cluster it started is gone
    for p in result["server_processes"]:
        assert not Path(f"/proc/{p['pid']}").exists() or _zombie(p["pid"]), p


def test_step_mode_then_a_check_step_at_a_fraction_of_the_highest_rate(tu: float) -> None:
    """`--step --check-at 0.8`: the ramp's steps (here two, both light enough to hold), then one
    more at 80 % of the highest sustained rate, reported with its p99 against the target."""
    result, table, _ = bench(["fanout", "--start", "-C", "40", "-R", "4", "-P", "4", "--step",
                              "--step-start", "50", "--step-factor", "2", "--max-steps", "2",
                              "-T", "1", "--drain", "1", "--check-at", "0.8", "--check-p99-ms", "40"],
                             timeout_s=180 * tu)
    ramp, check_step = result["steps"][:-1], result["steps"][-1]
    assert [s["rate"] for s in ramp] == [50, 100]
    for s in result["steps"]:
        assert_clean(s, sent=s["rate"], receivers_per_message=10)  # one second per step
    assert all(s["sustained"] for s in ramp) and result["highest_sustained"] == 100
    check = result["check"]
    assert check["k"] == 3 and check_step["k"] == 3
    assert check["rate"] == round(0.8 * result["highest_sustained"]) == check_step["rate"]
    assert check["p99_ms"] == check_step["latency_ms"]["p99"] and check["p99_target_ms"] == 40
    assert check["met"] == (check_step["sustained"] and check["p99_ms"] <= 40)
    assert f"p99 at 80% of it: step 3 at {check['rate']} msgs/s" in table
    assert "check at 80%" in table


def test_placement_is_for_fanout() -> None:
    proc = subprocess.run([*SWITCHBOARD, "bench", "idle", "--start", "--placement", "session"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--placement is for fanout" in proc.stderr


def test_check_at_needs_step_mode() -> None:
    proc = subprocess.run([*SWITCHBOARD, "bench", "fanout", "--start", "--check-at", "0.8"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0 and "--check-at needs fanout --step" in proc.stderr + proc.stdout
    proc = subprocess.run([*SWITCHBOARD, "bench", "fanout", "--start", "--step", "--check-at", "1.5"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "not a fraction" in proc.stderr


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def edge_receipts(cluster: DevCluster) -> list[float]:
    """Each edge's `edge_deliveries_total`: events it has received from routers."""
    out = []
    for p in cluster.by_role("edge"):
        with urllib.request.urlopen(p.metrics_url, timeout=5) as r:
            families = text_string_to_metric_families(r.read().decode())
        out.append(next(s.value for f in families for s in f.samples if s.name == "edge_deliveries_total"))
    return out


def test_placement_decides_how_many_edges_receive_each_message(cluster: DevCluster, tu: float) -> None:
    """`--placement session` puts a session's members on one edge, so each message reaches one
    edge; `spread` (the default) alternates them, so each message reaches both. The edges' own
    count of events received from routers shows it (plus a few presence events per session)."""
    receipts = {}
    for placement in ("session", "spread"):
        before = edge_receipts(cluster)
        result, table, _ = bench(["fanout", *against(cluster), "-C", "40", "-R", "4", "-P", "4", "-M", "100",
                                  "-T", "1", "--placement", placement],
                                 timeout_s=120 * tu, SWITCHBOARD_JWT_SECRET=cluster.jwt_secret)
        (step,) = result["steps"]
        assert_clean(step, sent=100, receivers_per_message=10)
        assert result["sessions_spanning_edges"] == (0 if placement == "session" else 4)
        assert f"sessions whose members are on more than one edge: {result['sessions_spanning_edges']}" in table
        receipts[placement] = [b - a for a, b in zip(before, edge_receipts(cluster), strict=True)]
    assert all(n >= 50 for n in receipts["session"])  # two sessions, 50 messages, on each edge
    assert sum(receipts["session"]) < 150  # every message on one edge only
    assert all(n >= 100 for n in receipts["spread"])  # every message on both edges


def test_idle_reports_memory_per_tier_and_answers_heartbeats(cluster: DevCluster, tu: float) -> None:
    result, table, _ = bench(["idle", *against(cluster), "-C", "50", "-R", "5", "--hold", "2",
                              "--heartbeat", "1"], timeout_s=120 * tu, SWITCHBOARD_JWT_SECRET=cluster.jwt_secret)
    assert result["connect"]["established"] == 50
    assert result["alive_after_hold"] == 50
    assert result["heartbeats_sent"] >= 50
    assert result["heartbeat_replies"] == result["heartbeats_sent"]
    tiers = {t["tier"]: t for t in result["memory"]["tiers"]}
    assert set(tiers) == {"edge", "router", "history", "redis"}
    assert all(t["rss_after_kb"] > 0 and t["kb_per_1k_connections"] is not None for t in tiers.values())
    assert_measured(result["servers"], CLUSTER_NAMES)
    assert "KiB per 1k conns" in table


@pytest.mark.parametrize("mode", [["--lanes", "8", "--chunks-per-request", "1"], []],
                         ids=["8-lanes-one-chunk-per-request", "1-lane-batched"])
def test_stream_delivers_every_chunk_in_order_to_every_client(cluster: DevCluster, tu: float,
                                                              mode: list[str]) -> None:
    result, table, _ = bench(["stream", *against(cluster), "-C", "3", "-M", "200", "-T", "2", *mode],
                             timeout_s=120 * tu, SWITCHBOARD_JWT_SECRET=cluster.jwt_secret)
    (step,) = result["steps"]
    assert step["send_errors"] == {}
    assert step["publish_ack_ms"]["p50"] is not None
    assert_clean(step, sent=400, receivers_per_message=3)
    assert_measured(step["servers"], CLUSTER_NAMES)
    assert "deliv/s" in table


def test_storm_grows_waves_up_to_the_limit(cluster: DevCluster, tu: float) -> None:
    result, table, _ = bench(["storm", *against(cluster), "-C", "200", "-R", "10", "--storm-start", "50",
                              "--connect-p99-limit-ms", str(60_000 * tu)],
                             timeout_s=120 * tu, SWITCHBOARD_JWT_SECRET=cluster.jwt_secret)
    waves = result["waves"]
    assert [w["attempted"] for w in waves] == [50, 100, 200]
    assert all(w["established"] == w["attempted"] and w["sustained"] for w in waves)
    assert result["highest_sustained"] > 0
    assert_measured(waves[-1]["servers"], CLUSTER_NAMES)
    assert "conn/s" in table
