"""Command-line options of `switchboard bench` (registered by services/cli.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

SCENARIOS = ("fanout", "idle", "stream", "storm")
PLACEMENTS = ("spread", "session")


@dataclass(frozen=True)
class BenchOptions:
    scenario: str
    urls: list[str] = field(default_factory=list)
    start: bool = False
    edges: int = 2
    routers: int = 2
    pids: list[str] = field(default_factory=list)
    clients: int = 2000
    rooms: int = 100
    publishers: int = 100
    rate: float = 500.0
    duration_s: float = 5.0
    step: bool = False
    step_start: float = 500.0
    step_factor: float = 1.4
    max_steps: int = 12
    refine: int = 2
    p99_limit_ms: float = 100.0
    check_at: float = 0.0
    check_p99_ms: float = 50.0
    placement: str = "spread"
    hold_s: float = 10.0
    heartbeat_s: float = 5.0
    lanes: int = 1
    chunks_per_request: int = 32
    storm_start: int = 50
    storm_factor: float = 2.0
    connect_p99_limit_ms: float = 1000.0
    workers: int = 2
    pad: int = 64
    connect_concurrency: int = 200
    connect_timeout_s: float = 30.0
    drain_s: float = 5.0
    max_seconds: float = 600.0
    json: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", choices=SCENARIOS)
    t = p.add_argument_group("target (one of)")
    t.add_argument("--url", dest="urls", action="append", default=[], metavar="WS_URL",
                   help="an edge of a running cluster, e.g. ws://127.0.0.1:18000 (repeat per edge)")
    t.add_argument("--start", action="store_true",
                   help="start a cluster (redis-server, history, routers, edges) for the run, stop it after")
    t.add_argument("--edges", type=int, default=2, help="with --start")
    t.add_argument("--routers", type=int, default=2, help="with --start")
    t.add_argument("--pid", dest="pids", action="append", default=[], metavar="NAME=PID",
                   help="a server process of a running cluster to measure, e.g. edge-1=4242 (repeat)")
    s = p.add_argument_group("load")
    s.add_argument("-C", "--clients", type=int, default=2000, help="connections (storm: the largest wave)")
    s.add_argument("-R", "--rooms", type=int, default=100, help="sessions the connections are spread over")
    s.add_argument("-P", "--publishers", type=int, default=100, help="fanout: publishing connections")
    s.add_argument("-M", "--rate", type=float, default=500.0, help="fanout/stream: total messages/s")
    s.add_argument("-T", "--duration", dest="duration_s", type=float, default=5.0, help="seconds per step")
    s.add_argument("--step", action="store_true", help="fanout: raise the rate until it fails")
    s.add_argument("--step-start", type=float, default=500.0)
    s.add_argument("--step-factor", type=float, default=1.4)
    s.add_argument("--max-steps", type=int, default=12)
    s.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure")
    s.add_argument("--p99-limit-ms", type=float, default=100.0, help="a step with a higher p99 fails")
    s.add_argument("--check-at", type=_fraction, default=0.0, metavar="FRACTION",
                   help="fanout --step: then one more step at this fraction of the highest sustained "
                        "rate, its p99 reported against --check-p99-ms (0.8: p99 at 80 %% of the maximum)")
    s.add_argument("--check-p99-ms", type=float, default=50.0, help="the p99 the --check-at step should meet")
    s.add_argument("--placement", choices=PLACEMENTS, default="spread",
                   help="fanout: which edge each connection uses. spread: a session's members alternate "
                        "over the edges, so every session spans them all (a load balancer that ignores the "
                        "path); session: all of a session's members on one edge (session number modulo "
                        "edges), as behind an ingress that hashes the WebSocket path")
    s.add_argument("--hold", dest="hold_s", type=float, default=10.0, help="idle: seconds to hold")
    s.add_argument("--heartbeat", dest="heartbeat_s", type=float, default=5.0,
                   help="idle: seconds between heartbeats per connection")
    s.add_argument("--lanes", type=int, default=1,
                   help="stream: sequential HTTP publishers (keep-alive connections) in all, "
                        "each an ordered producer (one streamed reply)")
    s.add_argument("--chunks-per-request", type=int, default=32,
                   help="stream: a lane sends the chunks that are due, up to this many, in one "
                        "request (as switchboard_client's StreamPublisher does); 1: one per request")
    s.add_argument("--storm-start", type=int, default=50, help="storm: connections in the first wave")
    s.add_argument("--storm-factor", type=float, default=2.0, help="storm: wave growth")
    s.add_argument("--connect-p99-limit-ms", type=float, default=1000.0,
                   help="storm: a wave with a higher connect+auth p99 fails")
    r = p.add_argument_group("load generator")
    r.add_argument("-W", "--workers", type=int, default=2, help="load generator processes")
    r.add_argument("--pad", type=int, default=64, help="characters of content per message")
    r.add_argument("--connect-concurrency", type=int, default=200, help="connection attempts in flight")
    r.add_argument("--connect-timeout", dest="connect_timeout_s", type=float, default=30.0)
    r.add_argument("--drain", dest="drain_s", type=float, default=5.0,
                   help="seconds to wait for deliveries after the last send")
    r.add_argument("--max-seconds", type=float, default=600.0, help="budget of the whole run")
    r.add_argument("--json", action="store_true", help="print the results as one JSON object")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1]")
    return value


def from_namespace(ns: argparse.Namespace) -> BenchOptions:
    names = BenchOptions.__dataclass_fields__
    return BenchOptions(**{k: v for k, v in vars(ns).items() if k in names})
