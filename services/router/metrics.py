"""The router's Prometheus metrics, registered on the process registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter("router_publishes_total", "Publishes handled, by result",
                                 ["result"], registry=registry)
        self.forwards = Counter("router_forwards_total", "Publishes forwarded to the owner",
                                ["result"], registry=registry)
        self.deliveries = Counter("router_deliveries_total", "Events sent to edges",
                                  registry=registry)
        self.edges = Gauge("router_edges_connected", "Edges with an open Connect stream",
                           registry=registry)
        self.dropped_links = Counter("router_edge_links_dropped_total",
                                     "Edge streams closed because their queue overflowed",
                                     registry=registry)
        self.append_seconds = Histogram("router_history_append_duration_seconds",
                                        "Batch append latency to history", registry=registry)
