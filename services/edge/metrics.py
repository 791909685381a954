"""The edge's Prometheus metrics and the counters behind /api/v1/stats."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge("edge_connections_active", "Open authenticated WebSocket connections",
                                 registry=registry)
        self.connections_total = Counter("edge_connections_total",
                                         "WebSocket connections accepted", registry=registry)
        self.auth_failures = Counter("edge_auth_failures_total", "Failed authentications by reason",
                                     ["reason"], registry=registry)
        self.closes = Counter("edge_closes_total", "Connections closed by the edge, by code",
                              ["code"], registry=registry)
        self.messages_in = Counter("edge_messages_in_total", "Client frames handled, by type",
                                   ["type"], registry=registry)
        self.messages_out = Counter("edge_messages_out_total", "Frames sent to clients",
                                    registry=registry)
        self.bytes_in = Counter("edge_bytes_in_total", "Bytes received from clients",
                                registry=registry)
        self.bytes_out = Counter("edge_bytes_out_total", "Bytes sent to clients",
                                 registry=registry)
        self.errors = Counter("edge_client_errors_total", "Error events sent, by code",
                              ["code"], registry=registry)
        self.deliveries = Counter("edge_deliveries_total", "Events received from routers",
                                  registry=registry)
        self.duplicates = Counter("edge_duplicate_deliveries_total",
                                  "Deliveries dropped because the offset was already delivered",
                                  registry=registry)
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
        self.publish_seconds = Histogram("edge_publish_duration_seconds",
                                         "Publish until acknowledged", registry=registry)
        self.peak = 0

    def connected(self, current: int) -> None:
        self.connections.set(current)
        self.peak = max(self.peak, current)
