"""Process-level helpers: the event loop, the collector, signal handling and the metrics
listener for gRPC tiers."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, start_http_server

# Young-generation threshold (CPython's default is 700). A connection storm allocates many
# long-lived objects per connection; with the defaults, the collector ran most of the time
# (26 % of an edge's CPU while 3,000 clients connected, py-spy), mostly full collections that
# rescan every object of the process.
GC_THRESHOLDS = (10_000, 20, 20)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], event_loop: str = "auto") -> T:
    """asyncio.run on the chosen loop: "auto" is uvloop where it is installed (as uvicorn
    chooses for the edge), "asyncio" the standard loop. uvloop runs the loop itself in C: in a
    router under load, the standard loop's own Python code was a third of the process."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


_tuned = False


def tune_gc() -> None:
    """For a tier's own process: move what exists before the tier starts (modules, settings)
    to the permanent generation, which collections never scan, and collect the young
    generation less often."""
    global _tuned
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def settle_heap() -> None:
    """Once a tier is up, in a process tune_gc() prepared: collect and freeze again. Starting
    the tier imports modules and builds clients, links and the app; without this, the first
    connection storm's young-generation passes scan those objects (a fresh edge spent 3 ms
    of its first 100 connections in one, more than a tenth of their CPU). Elsewhere (tests
    that run tiers in their own process) it does nothing."""
    if _tuned:
        gc.collect()
        gc.freeze()


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the tier then drains and exits)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextmanager
def metrics_listener(host: str, port: int, registry: CollectorRegistry) -> Iterator[None]:
    if not port:
        yield
        return
    server, thread = start_http_server(port, addr=host, registry=registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
