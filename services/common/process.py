"""Process-level helpers: signal handling and the metrics listener for gRPC tiers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, start_http_server


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
