"""One connected edge: a bounded outbound queue drained by the Connect stream's writer."""

from __future__ import annotations

import asyncio

from services.common.grpc_gen.routing.v1 import routing_pb2 as pb


class EdgeLink:
    """Deliveries and acks for one edge. Overflow marks the link broken instead of growing:
    the stream is then closed, the edge reconnects, re-attaches and repairs gaps from history."""

    def __init__(self, edge_id: str, max_queue: int) -> None:
        self.edge_id = edge_id
        self.queue: asyncio.Queue[pb.RouterMessage | None] = asyncio.Queue(max_queue)
        self.channels: set[str] = set()
        self.broken = False

    def send(self, message: pb.RouterMessage) -> bool:
        if self.broken:
            return False
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.broken = True
            self.close()
            return False

    def close(self) -> None:
        # The writer exits when it sees None; make room for it if the queue is full.
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
