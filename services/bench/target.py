"""The cluster under test: one that is already running (edge URLs, optional pids) or one we start."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from services.bench.procstats import ServerProcess, parse_pid_option
from services.common.settings import DEV_JWT_SECRET
from services.devcluster import DevCluster

# Like the shared harness: the per-connection rate limit must not throttle the publishers, any
# user may join any session, and no per-connection log lines.
CLUSTER_ENV = {
    "SWITCHBOARD_CLIENT_RATE_PER_S": "1000000",
    "SWITCHBOARD_CLIENT_BURST": "1000000",
    "SWITCHBOARD_ALLOW_ANY_SESSION": "true",
    "SWITCHBOARD_LOG_LEVEL": "warning",
}

Buckets = dict[float, float]  # a histogram's cumulative counts by upper bound (seconds)
# What a step reads from the servers: every process's event loop lag, and an edge's own delivery
# latency (publish accepted by the edge -> frame written to the client's socket).
SCRAPED = ("event_loop_lag_seconds", "edge_delivery_latency_seconds")


@dataclass
class Target:
    edge_urls: list[str]  # ws://host:port
    processes: list[ServerProcess]
    jwt_secret: str
    cluster: DevCluster | None = None
    notes: dict[str, str] = field(default_factory=dict)
    metrics_urls: dict[str, str] = field(default_factory=dict)  # process name -> its /metrics

    @property
    def http_urls(self) -> list[str]:
        return ["http" + u[2:] if u.startswith("ws") else u for u in self.edge_urls]

    def chat_url(self, edge: int, session: str) -> str:
        return f"{self.edge_urls[edge % len(self.edge_urls)]}/ws/chat/{session}"

    def edge_stats(self) -> list[dict[str, Any]]:
        """Each edge's GET /api/v1/stats (or the error), for the counters the server itself keeps."""
        out: list[dict[str, Any]] = []
        for url in self.http_urls:
            try:
                with urllib.request.urlopen(f"{url}/api/v1/stats", timeout=2.0) as r:
                    out.append(json.loads(r.read()))
            except (OSError, ValueError) as e:
                out.append({"error": f"{type(e).__name__}: {e}"})
        return out

    def histograms(self) -> dict[str, dict[str, Buckets]]:
        """Each process's SCRAPED histograms now, by family; a process whose /metrics does not
        answer is left out."""
        out: dict[str, dict[str, Buckets]] = {}
        for name, url in self.metrics_urls.items():
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:
                    out[name] = histogram_buckets(r.read().decode())
            except (OSError, ValueError):
                continue
        return out

    def gone(self) -> list[str]:
        """Names of measured processes that are gone."""
        return [p.name for p in self.processes if not os.path.exists(f"/proc/{p.pid}")]

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


def histogram_buckets(text: str) -> dict[str, Buckets]:
    """The SCRAPED histograms (unlabelled) found in a Prometheus text exposition."""
    out: dict[str, Buckets] = {}
    for family in text_string_to_metric_families(text):
        if family.name in SCRAPED:
            out[family.name] = {float(x.labels["le"]): x.value for x in family.samples
                                if x.name.endswith("_bucket")}
    return out


def connect_to(urls: list[str], pids: list[str]) -> Target:
    """A running cluster: its edges' ws:// base URLs and, optionally, NAME=PID of its processes."""
    edges = []
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"--url must be ws://host:port, got {u!r}")
        edges.append(f"{parts.scheme}://{parts.netloc}")
    secret = os.environ.get("SWITCHBOARD_JWT_SECRET") or DEV_JWT_SECRET
    metrics = {f"edge {urlsplit(e).netloc}": f"{'https' if e.startswith('wss') else 'http'}://"
               f"{urlsplit(e).netloc}/metrics" for e in edges}  # edges serve it on their HTTP port
    return Target(edges, [parse_pid_option(p) for p in pids], secret, metrics_urls=metrics)


def start_cluster(edges: int, routers: int) -> Target:
    """A DevCluster with its own redis-server on free ports; stopped by Target.stop()."""
    env = {k: os.environ.get(k, v) for k, v in CLUSTER_ENV.items()}
    cluster = DevCluster(edges=edges, routers=routers, port=0, env=env)
    try:
        cluster.start(timeout_s=60.0)
    except BaseException:
        cluster.stop()
        raise
    procs = [ServerProcess(p.name, p.popen.pid) for p in cluster.procs if p.popen is not None]
    if cluster.redis is not None and cluster.redis.popen is not None:
        procs.append(ServerProcess("redis", cluster.redis.popen.pid))
    return Target(cluster.edge_urls(), procs, cluster.jwt_secret, cluster, {"logs": str(cluster.workdir)},
                  {p.name: p.metrics_url for p in cluster.procs if p.metrics_url})
