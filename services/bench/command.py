"""`switchboard bench`: pick or start the cluster, run one scenario, print the table (and JSON).

Exit status: 0 when the run completed (whether or not a step was sustained: that is a result),
1 when it could not run or a measured server process died, 130 on Ctrl-C. Whatever happens, the
worker processes and a cluster started here are stopped before it returns.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from services.bench.options import BenchOptions
from services.bench.report import render
from services.bench.scenarios import Result, Run, log
from services.bench.target import Target, connect_to, start_cluster


def _check(o: BenchOptions) -> str | None:
    if o.start == bool(o.urls):
        return "give either --start or one --url per edge"
    if o.clients < 1 or o.workers < 1 or o.duration_s <= 0 or o.rate <= 0:
        return "clients, workers, duration and rate must be positive"
    if o.scenario == "fanout" and not 1 <= o.publishers <= o.clients:
        return "fanout needs 1 <= publishers <= clients"
    if o.scenario == "fanout" and not 1 <= o.rooms <= o.clients:
        return "fanout needs 1 <= rooms <= clients"
    if o.check_at and not (o.scenario == "fanout" and o.step):
        return "--check-at needs fanout --step"
    if o.placement != "spread" and o.scenario != "fanout":
        return "--placement is for fanout"
    return None


def _loadavg() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _config_line(o: BenchOptions, t: Target) -> str:
    parts = {"fanout": f"C={o.clients} R={o.rooms} P={o.publishers} "
                       + (f"step from {o.step_start}/s x{o.step_factor}" if o.step else f"M={o.rate}/s")
                       + (f", check at {o.check_at:.0%}" if o.check_at else "")
                       + (f", placement {o.placement}" if o.placement != "spread" else "")
                       + f" T={o.duration_s}s",
             "idle": f"C={o.clients} hold {o.hold_s}s heartbeat {o.heartbeat_s}s",
             "stream": f"{o.rate} chunks/s for {o.duration_s}s to {o.clients} clients, {o.lanes} HTTP lanes, "
                       f"≤ {o.chunks_per_request} chunks per request",
             "storm": f"waves from {o.storm_start} x{o.storm_factor} up to {o.clients}"}[o.scenario]
    return f"{parts}; {len(t.edge_urls)} edge(s), W={o.workers}"


def _execute(o: BenchOptions, run: Run) -> Result:
    scenario: dict[str, Callable[[], Result]] = {
        "fanout": run.fanout, "idle": run.idle, "stream": run.stream, "storm": run.storm}
    return scenario[o.scenario]()


def run_bench(o: BenchOptions) -> int:
    problem = _check(o)
    if problem:
        print(f"switchboard bench: {problem}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < o.clients + 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, o.clients + 1024), hard))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell may start us with it ignored, and Ctrl-C must always clean up
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    signal.alarm(int(o.max_seconds + 120))  # the whole run stops by itself, cleanup included
    target: Target | None = None
    run: Run | None = None
    started_at = time.time()
    load0 = _loadavg()
    try:
        if o.start:
            log(f"starting a cluster: {o.edges} edge(s), {o.routers} router(s), history, redis-server")
            target = start_cluster(o.edges, o.routers)
            log(f"cluster up: edges {', '.join(target.edge_urls)} (logs in {target.notes['logs']})")
        else:
            target = connect_to(o.urls, o.pids)
        stats0 = target.edge_stats()
        run = Run(o, target)
        result: Result = {"scenario": o.scenario, "config": vars_of(o), "config_line": _config_line(o, target),
                          "p99_limit_ms": o.p99_limit_ms, "started_cluster": o.start,
                          "edges": target.edge_urls,
                          "server_processes": [{"name": p.name, "pid": p.pid} for p in target.processes]}
        result.update(_execute(o, run))
        result["loadgen"] = run.status()
        result["edges_stats"] = edge_deltas(stats0, target.edge_stats())
        result["servers_exited"] = target.gone()
        result["machine"] = {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": _loadavg()}
        result["wall_s"] = round(time.time() - started_at, 1)
    except KeyboardInterrupt:
        log("interrupted: stopping")
        return 130
    except Exception as e:  # the command reports any failure, then cleans up
        log(f"failed: {type(e).__name__}: {e}")
        return 1
    finally:
        signal.alarm(0)
        for sig in previous:  # cleanup must not be cut short
            signal.signal(sig, signal.SIG_IGN)
        if run is not None:
            run.pool.stop()
        if target is not None and target.cluster is not None:
            log("stopping the cluster")
            target.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(render(result), flush=True)
    if o.json:
        print(json.dumps(result, separators=(",", ":")), flush=True)
    return 1 if result["servers_exited"] else 0


def vars_of(o: BenchOptions) -> dict[str, Any]:
    return {k: getattr(o, k) for k in o.__dataclass_fields__}


COUNTERS = ("messages_in", "messages_out", "bytes_in", "bytes_out")


def edge_deltas(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each edge counted during the run (its /api/v1/stats after minus before)."""
    out = []
    for b, a in zip(before, after, strict=True):
        if "error" in a or "error" in b:
            out.append({"error": a.get("error") or b.get("error")})
            continue
        row = {"node_id": a.get("node_id"), "peak_connections": a.get("peak_connections")}
        row.update({k: a.get(k, 0) - b.get(k, 0) for k in COUNTERS})
        closes = {c: n - b.get("closes_by_code", {}).get(c, 0) for c, n in a.get("closes_by_code", {}).items()}
        row["closes_by_code"] = {c: n for c, n in closes.items() if n}
        out.append(row)
    return out
