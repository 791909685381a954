"""Python CPU per delivery of the edge's fan-out, without sockets or other processes.

Builds real `Connection` objects (live, writing straight to their socket) on a transport that
only counts its writes, subscribes them to `--rooms` channels of `--members` each in a real
`Hub`, and hands the hub `--deliveries` deliveries round-robin over the channels, `--batch` at a
time inside one cork (as the edge hands on a router's batch). It prints this process's CPU per
delivery (best of `--rounds`) and one JSON line. What it measures is the interpreter's part of a
delivery: the hub's checks, the connection's order and queue checks, the cork and the metrics;
the kernel's `write()` and the hops between processes are not in it (docs/performance.md,
fifteenth session, puts them beside it).

    uv run python -m bench.fanout_loop
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from services.edge.catchup import ChannelSync
from services.edge.connection import Connection
from services.edge.domain import Delivery
from services.edge.hub import ChannelState, Hub
from services.edge.metrics import EdgeMetrics
from services.edge.wsproto import CORK, FrameWriter, text_frame


class CountingTransport:
    """Takes every write at once, as an empty socket buffer does, and counts the writes and bytes."""

    writes = 0
    written = 0

    def write(self, data: bytes) -> None:
        CountingTransport.writes += 1
        CountingTransport.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class Socket(FrameWriter):
    """A connection's open socket with room in its buffer (the fan-out's common case)."""

    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: Any = CountingTransport()

    @property
    def open(self) -> bool:
        return True

    @property
    def writable(self) -> bool:
        return True

    async def wait_writable(self) -> None:
        return None

    @property
    def frames(self) -> FrameWriter:
        return self


def build(rooms: int, members: int) -> tuple[Hub, list[Connection]]:
    metrics = EdgeMetrics(CollectorRegistry())
    hub = Hub(pool=None, history=None, metrics=metrics, pending_max=1000,  # type: ignore[arg-type]
              attach_timeout_s=1.0)
    settings = SimpleNamespace(send_queue_max=1000, client_rate_per_s=100.0, client_burst=100)
    ctx: Any = SimpleNamespace(settings=settings, metrics=metrics)
    connections = []
    for r in range(rooms):
        channel = f"session:room-{r}"
        state = hub.channels[channel] = ChannelState(ChannelSync(channel, 1000))
        for _ in range(members):
            c = Connection(Socket(), ctx, "chat", channel)  # type: ignore[arg-type]
            c._direct = True  # past its auth reply: frames go straight to the socket
            state.subscribers.add(c)
            connections.append(c)
    return hub, connections


def run(hub: Hub, deliveries: list[Delivery], batch: int) -> float:
    start = time.process_time()
    for k in range(0, len(deliveries), batch):
        with CORK:
            for d in deliveries[k:k + batch]:
                hub.on_delivery(d)
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--members", type=int, default=10, help="subscribers per channel on this edge")
    ap.add_argument("--deliveries", type=int, default=100_000, help="router deliveries per round")
    ap.add_argument("--batch", type=int, default=100, help="deliveries per cork (one router batch)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    best = float("inf")
    for _ in range(args.rounds):
        hub, _connections = build(args.rooms, args.members)
        now = time.time()
        deliveries = [Delivery(channel=f"session:room-{i % args.rooms}", offset=i // args.rooms + 1, epoch="e",
                               frame=b'{"type":"chat_message","n":%d}' % i, priority=1, accepted=now)
                      for i in range(args.deliveries)]
        CountingTransport.writes = CountingTransport.written = 0
        best = min(best, run(hub, deliveries, args.batch))
        expected = args.members * sum(len(text_frame(d.frame)) for d in deliveries)
        if CountingTransport.written != expected:  # every subscriber gets every frame, once
            raise SystemExit(f"expected {expected} bytes written, got {CountingTransport.written}")
    frames = args.deliveries * args.members
    per = best / frames * 1e6
    print(f"{per:.3f} µs of CPU per delivery (best of {args.rounds}: {frames} frames to "
          f"{args.rooms} x {args.members} subscribers in {CountingTransport.writes} writes, "
          f"{args.batch} router deliveries per cork)")
    print(json.dumps({"us_per_delivery": round(per, 3), "frames": frames, "writes": CountingTransport.writes,
                      "rooms": args.rooms, "members": args.members, "batch": args.batch}))


if __name__ == "__main__":
    main()
