"""The router's Prometheus metrics, registered on the process registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.telemetry import FAST_BUCKETS, LoopHistograms

FANOUT_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter("router_publishes_total", "Publishes handled, by result",
                                 ["result"], registry=registry)
        # Updated per publish or per event: lock-free (services/common/telemetry.py).
        self.publish_seconds = LoopHistograms("router_publish_duration_seconds",
                                              "Publish received until acknowledged, by outcome",
                                              ["outcome"], buckets=FAST_BUCKETS, registry=registry)
        for outcome in ("ok", "duplicate", "error", "forwarded", "ephemeral"):
            self.publish_seconds.labels(outcome)  # exported at 0 from the start
        self.forwards = Counter("router_forwards_total", "Publishes forwarded to the owner",
                                ["result"], registry=registry)
        self.deliveries = Counter("router_deliveries_total", "Events sent to edges",
                                  registry=registry)
        self.fanout = LoopHistograms("router_fanout_edges", "Edges one event is sent to",
                                     buckets=FANOUT_BUCKETS, registry=registry).labels()
        self.edges = Gauge("router_edges_connected", "Edges with an open Connect stream or stream link",
                           registry=registry)
        self.dropped_links = Counter("router_edge_links_dropped_total",
                                     "Edge streams closed because their queue overflowed",
                                     registry=registry)
        self.links_refused = Counter("router_edge_links_refused_total",
                                     "Edge stream links closed at their first frame: no hello "
                                     "(reason=hello) or a wrong service token (reason=token)",
                                     ["reason"], registry=registry)
        for reason in ("hello", "token"):
            self.links_refused.labels(reason)  # exported at 0 from the start
        self.append_seconds = LoopHistograms("router_history_append_duration_seconds",
                                             "Batch append latency to history", buckets=FAST_BUCKETS,
                                             registry=registry).labels()
        self.attaches = Counter("router_attaches_total", "Channels attached by edges",
                                registry=registry)
        self.detaches = Counter("router_detaches_total", "Channels detached by edges",
                                registry=registry)
        self.ring_changes = Counter("router_ring_changes_total",
                                    "Changes of the live router set", registry=registry)
        self.channels_owned = Gauge("router_channels_owned",
                                    "Channels attached here that this router owns",
                                    registry=registry)
        self.routers_live = Gauge("router_routers_live",
                                  "Routers in the ring as this router sees it", registry=registry)

    def watch(self, channels_owned: Callable[[], float], routers_live: Callable[[], float]) -> None:
        """Gauges computed at scrape time."""
        self.channels_owned.set_function(channels_owned)
        self.routers_live.set_function(routers_live)
