"""structlog and Prometheus setup. Each process builds its own CollectorRegistry."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


def configure_logging(*, json: bool = True, level: str = "info") -> None:
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


# Latency buckets for calls inside the cluster (sub-millisecond to seconds).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Streams (Connect) live for minutes to days.
GRPC_BUCKETS = (*FAST_BUCKETS, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)


class LoopHistogram:
    """One histogram written by one event loop without a lock, read when scraped. A
    prometheus-client histogram takes a lock and scans its buckets on every observation, which
    costs more than some of what it measures (a fan-out to one edge, a frame written)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value` (the frames of one fan-out, written together)."""
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def time(self) -> _Timer:
        """`with h.time():` observes the block's duration in seconds."""
        return _Timer(self)

    def buckets(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class _Timer:
    __slots__ = ("_h", "_start")

    def __init__(self, h: LoopHistogram) -> None:
        self._h = h
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._h.observe(time.perf_counter() - self._start)


class LoopHistograms(Collector):
    """A histogram metric of LoopHistogram children, one per label values, exported in the
    Prometheus histogram format. Children are made by the loop and only read by the scrape."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._buckets = tuple(buckets)
        self._children: dict[tuple[str, ...], LoopHistogram] = {}
        if not labelnames:
            self.labels()  # exported at zero from the start, as prometheus-client does
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogram:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
            child = self._children[values] = LoopHistogram(self._buckets)
        return child

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, h in list(self._children.items()):
            family.add_metric(list(values), h.buckets(), h.sum)
        yield family


# How late an event loop runs a timer: from "on time" (uvloop's timers have 1 ms resolution) to
# a process that is stalled.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_INTERVAL_S = 0.1


class LoopLag:
    """How late this process's event loop runs a timer set every `interval_s`: each firing
    passes the delay (seconds) to `observe`. A loop that waits for a core (the machine is
    saturated) or runs callbacks that do not yield delays everything on it by that much: every
    frame read or written, every call's answer. One timer (no task); `start` in the loop,
    `close` cancels it."""

    def __init__(self, observe: Callable[[float], None], interval_s: float = LAG_INTERVAL_S) -> None:
        self._observe = observe
        self._interval_s = interval_s
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.monotonic() + self._interval_s
        self._timer = loop.call_later(self._interval_s, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._observe(max(0.0, time.monotonic() - self._due))
        self._schedule(loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def loop_lag_metric(registry: CollectorRegistry, interval_s: float = LAG_INTERVAL_S) -> LoopLag:
    """A tier's `event_loop_lag_seconds` (every process of every tier exports it)."""
    h = LoopHistograms(
        "event_loop_lag_seconds",
        "How late the event loop ran a timer set every 0.1 s (waiting for a core, or behind "
        "callbacks that did not yield)", buckets=LAG_BUCKETS, registry=registry).labels()
    return LoopLag(h.observe, interval_s)


def run_delays_ns(pid: int | str = "self") -> dict[str, int] | None:
    """Per thread of the process, how long it has been runnable but not running, i.e. waiting
    for a CPU (the kernel's run delay, /proc/PID/task/TID/schedstat), in ns; None when the
    process is gone or the kernel keeps no schedstat."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out: dict[str, int] = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[1])  # time on a CPU, waiting on a run queue, slices
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return out or None


class RunDelay:
    """The run delay of all of a process's threads so far, kept monotonic: what a thread had
    waited stays counted after it exits (a counter must not go down). Scrapes may read it from
    several threads at once."""

    def __init__(self, pid: int | str = "self") -> None:
        self._pid = pid
        self._last: dict[str, int] = {}
        self._gone_ns = 0
        self._lock = threading.Lock()

    def update(self, now: dict[str, int]) -> int:
        """The total in ns, given each live thread's run delay now. A thread id seen with less
        than before is a new thread that reused it: the old one's delay stays counted."""
        with self._lock:
            self._gone_ns += sum(ns for tid, ns in self._last.items() if now.get(tid, -1) < ns)
            self._last = dict(now)
            return self._gone_ns + sum(now.values())

    def seconds(self) -> float | None:
        now = run_delays_ns(self._pid)
        return None if now is None else self.update(now) / 1e9


class CpuWaitCollector(Collector):
    """`process_cpu_wait_seconds_total`: how long the process's threads were runnable but
    waiting for a CPU. Beside `event_loop_lag_seconds` it tells the node from the code: a late
    loop that also waits for a CPU lacks cores; one that does not runs long callbacks. Nothing
    is exported where the kernel keeps no schedstat."""

    def __init__(self, registry: CollectorRegistry, pid: int | str = "self") -> None:
        self._delay = RunDelay(pid)
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # not known before the first read: whether the kernel keeps schedstat

    def collect(self) -> Iterator[Metric]:
        waited = self._delay.seconds()
        if waited is not None:
            yield CounterMetricFamily(
                "process_cpu_wait_seconds", "Time the process's threads were runnable but waiting "
                "for a CPU (the kernel's run delay)", value=waited)


def new_registry() -> CollectorRegistry:
    """The process's registry, with process_* (CPU, CPU wait, memory, fds) and python_info."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    CpuWaitCollector(registry)
    PlatformCollector(registry=registry)
    return registry


class GrpcMetrics:
    """grpc_{server,client}_handled_total and _handling_seconds, by service, method and code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_code"]
        self.server_handled = Counter("grpc_server_handled_total", "RPCs completed on the server",
                                      labels, registry=registry)
        self.server_seconds = Histogram("grpc_server_handling_seconds",
                                        "RPC handling time on the server (a stream's life)",
                                        labels, buckets=GRPC_BUCKETS, registry=registry)
        self.client_handled = Counter("grpc_client_handled_total", "RPCs completed by this client",
                                      labels, registry=registry)
        self.client_seconds = Histogram("grpc_client_handling_seconds",
                                        "RPC time seen by the client (a stream's life)",
                                        labels, buckets=GRPC_BUCKETS, registry=registry)

    def server_done(self, service: str, method: str, code: str, seconds: float) -> None:
        self.server_handled.labels(service, method, code).inc()
        self.server_seconds.labels(service, method, code).observe(seconds)

    def client_done(self, service: str, method: str, code: str, seconds: float) -> None:
        self.client_handled.labels(service, method, code).inc()
        self.client_seconds.labels(service, method, code).observe(seconds)


def split_method(full: str | bytes) -> tuple[str, str]:
    """'/switchboard.routing.v1.Router/Connect' -> ('switchboard.routing.v1.Router', 'Connect')."""
    text = full.decode() if isinstance(full, bytes) else full
    service, _, method = text.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


log = structlog.get_logger("switchboard")
