"""The edge's Prometheus metrics and the counters behind /api/v1/stats.

Names and labels follow the metrics contract shared with the dashboards and alerts. Gauges over
the open connections (count by endpoint, send-queue depth) are computed when scraped. What is
counted once per delivered frame (frames and bytes out, delivery latency) is kept in plain
integers and lists, read when scraped: a prometheus-client counter or histogram takes a lock on
every update, which would cost more than the write itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.telemetry import FAST_BUCKETS, LoopHistograms

LANES = ("control", "durable", "ephemeral")  # SendQueue lane index -> label
ENDPOINTS = ("chat", "agent_status")


class Connection(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def queue(self) -> Sized: ...


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections_total = Counter("edge_connections_total",
                                         "WebSocket connections accepted, by endpoint",
                                         ["endpoint"], registry=registry)
        self.auth = Counter("edge_auth_total", "Authentications by result (ok or the failure reason)",
                            ["result"], registry=registry)
        # once per connection: the children, not a labels() lookup each time
        self.accepted = {kind: self.connections_total.labels(kind) for kind in ENDPOINTS}
        self.auth_ok = self.auth.labels("ok")
        self.closes = Counter("edge_closes_total", "Connections closed by the edge, by code",
                              ["code"], registry=registry)
        self.messages_in = Counter("edge_frames_in_total", "Client frames handled, by type",
                                   ["type"], registry=registry)
        # Per delivered frame, by lane index: plain lists, exported by _HotCollector.
        self.frames_out = [0, 0, 0]
        self.bytes_out = [0, 0, 0]
        self.delivery_latency = LoopHistograms(
            "edge_delivery_latency_seconds",
            "A client's message read by an edge (or a publish call begun) until its frame is "
            "written to a client (live deliveries)",
            buckets=FAST_BUCKETS, registry=registry).labels()
        self.bytes_in = Counter("edge_bytes_in_total", "Bytes received from clients",
                                registry=registry)
        self.errors = Counter("edge_client_errors_total", "Error events sent, by code",
                              ["code"], registry=registry)
        self.deliveries = Counter("edge_deliveries_total", "Events received from routers",
                                  registry=registry)
        self.duplicates = Counter("edge_duplicate_deliveries_total",
                                  "Deliveries dropped because the offset was already delivered",
                                  registry=registry)
        self.recoveries = Counter("edge_recoveries_total", "Channel recoveries by outcome",
                                  ["outcome"], registry=registry)
        self.gap_repairs = Counter("edge_gap_repairs_total", "Offset gaps repaired from history",
                                   ["result"], registry=registry)
        self.repair_overflow = Counter("edge_repair_overflow_total",
                                       "Deliveries dropped while a gap repair held too many (read again from history)",
                                       registry=registry)
        self.rate_limited = Counter("edge_rate_limited_total",
                                    "Client messages refused by the per-connection rate limit",
                                    registry=registry)
        self.queue_overflows = Counter("edge_send_queue_overflows_total",
                                       "Connections closed because their send queue was full",
                                       registry=registry)
        self.publishes = Counter("edge_publishes_total", "Publishes by source and result",
                                 ["source", "result"], registry=registry)
        self.client_publishes_ok = self.publishes.labels("client", "ok")  # once per client message
        self.publish_seconds = LoopHistograms(
            "edge_publish_duration_seconds",
            "A client's message (or a publish API call) read until acknowledged or failed, a "
            "message's wait behind its connection's earlier ones included", buckets=FAST_BUCKETS,
            registry=registry).labels()
        self.ready = Gauge("edge_ready", "1 when /readyz answers 200 (refreshed every few seconds)",
                           registry=registry)
        self._registry = registry
        registry.register(_HotCollector(self))
        self.peak = 0

    def connected(self, current: int) -> None:
        self.peak = max(self.peak, current)

    def written(self, lane: int, size: int, n: int = 1, accepted: float = 0.0) -> None:
        """`n` frames of `size` bytes written to clients in one lane; `accepted`: when the
        publish of a live delivery was accepted (unix seconds), for the delivery latency."""
        self.frames_out[lane] += n
        self.bytes_out[lane] += size * n
        if accepted:
            self.delivery_latency.observe(time.time() - accepted, n)

    def watch(self, connections: Collection[Connection], routers_connected: Callable[[], int]) -> None:
        """Register the gauges computed at scrape time over the open connections."""
        self._registry.register(_LiveCollector(connections, routers_connected))


class _LiveCollector(Collector):
    def __init__(self, connections: Collection[Connection], routers_connected: Callable[[], int]) -> None:
        self._connections = connections
        self._routers_connected = routers_connected

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(empty=True))

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(empty=False))

    def _families(self, *, empty: bool) -> list[Metric]:
        active = GaugeMetricFamily("edge_connections_active", "Open authenticated WebSocket connections",
                                   labels=["endpoint"])
        frames = GaugeMetricFamily("edge_send_queue_frames", "Frames queued, all connections")
        fullest = GaugeMetricFamily("edge_send_queue_frames_max", "The fullest connection's queue")
        routers = GaugeMetricFamily("edge_routers_connected", "Router streams up")
        if not empty:
            counts = dict.fromkeys(ENDPOINTS, 0)
            total = top = 0
            for conn in list(self._connections):
                counts[conn.kind] = counts.get(conn.kind, 0) + 1
                n = len(conn.queue)
                total += n
                top = max(top, n)
            for endpoint, n in counts.items():
                active.add_metric([endpoint], n)
            frames.add_metric([], total)
            fullest.add_metric([], top)
            routers.add_metric([], self._routers_connected())
        return [active, frames, fullest, routers]


class _HotCollector(Collector):
    def __init__(self, m: EdgeMetrics) -> None:
        self._m = m

    def collect(self) -> Iterator[Metric]:
        frames = CounterMetricFamily("edge_frames_out", "Frames written to clients, by lane", labels=["lane"])
        sent = CounterMetricFamily("edge_bytes_out", "Bytes written to clients, by lane", labels=["lane"])
        for i, lane in enumerate(LANES):
            frames.add_metric([lane], self._m.frames_out[i])
            sent.add_metric([lane], self._m.bytes_out[i])
        return iter([frames, sent])
