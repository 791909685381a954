"""The history tier's Prometheus metrics, registered on the process registry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.store.base import StoreError
from services.common.telemetry import FAST_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class HistoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.appends = Counter("history_appends_total", "Events in Append calls, by result",
                               ["result"], registry=registry)
        self.batch_size = Histogram("history_append_batch_size", "Events per Append call",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.read_seconds = Histogram("history_read_duration_seconds",
                                      "Read calls, including the store", buckets=FAST_BUCKETS,
                                      registry=registry)
        self.store_seconds = Histogram("history_store_duration_seconds",
                                       "Store operations by op (append, read, health)", ["op"],
                                       buckets=FAST_BUCKETS, registry=registry)
        self.store_errors = Counter("history_store_errors_total", "Failed store operations, by op",
                                    ["op"], registry=registry)
        self.trimmed = Counter("history_trimmed_events_total",
                               "Old events dropped to keep streams at their maximum length",
                               registry=registry)
        self.errors = Counter("history_errors_total", "Failed calls by reason", ["reason"],
                              registry=registry)
        # Label children resolved once: a labels() lookup per batch is a measurable cost.
        self.appends_ok = self.appends.labels("ok")
        self.appends_duplicate = self.appends.labels("duplicate")
        self._store_seconds = {op: self.store_seconds.labels(op) for op in ("append", "read", "health")}

    @contextlib.contextmanager
    def store_op(self, op: str) -> Iterator[None]:
        """Time one store operation and count it as an error if it raises StoreError."""
        start = time.perf_counter()
        try:
            yield
        except StoreError:
            self.store_errors.labels(op).inc()
            raise
        finally:
            child = self._store_seconds.get(op) or self.store_seconds.labels(op)
            child.observe(time.perf_counter() - start)
