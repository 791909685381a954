"""One connected edge: a bounded outbox of deliveries and acks, sent in batches on its stream."""

from __future__ import annotations

from services.common.batching import Outbox
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb


class EdgeLink:
    """Deliveries and acks for one edge. Overflow marks the link broken instead of growing:
    the stream is then closed, the edge reconnects, re-attaches and repairs gaps from history."""

    def __init__(self, edge_id: str, max_queue: int) -> None:
        self.edge_id = edge_id
        self.outbox: Outbox[pb.RouterMessage, pb.RouterMessage] = Outbox(max_queue, _size_of, _pack)
        self.channels: set[str] = set()
        self.broken = False

    def send(self, message: pb.RouterMessage) -> bool:
        if self.broken:
            return False
        if self.outbox.put(message):
            return True
        if not self.outbox.closed:  # full
            self.broken = True
            self.close()
        return False

    def close(self) -> None:
        """The stream sends what is queued, then ends."""
        self.outbox.close()


def _size_of(message: pb.RouterMessage) -> int:
    return len(message.delivery.frame) + 32


def _pack(batch: list[pb.RouterMessage]) -> pb.RouterMessage:
    return batch[0] if len(batch) == 1 else pb.RouterMessage(batch=pb.RouterBatch(messages=batch))
