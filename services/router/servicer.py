"""Router gRPC servicer: proto <-> domain only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import structlog
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]

from services.common.batching import BatchSink
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.tasks import first_completed
from services.router.links import EdgeLink
from services.router.metrics import RouterMetrics
from services.router.ownership import Ownership
from services.router.publisher import Publisher

log = structlog.get_logger("switchboard.router")

# Hands the edge's messages to the callback (which does not block) until the edge ends the
# stream; raises when the stream fails.
Read = Callable[[Callable[[list[pb.EdgeMessage]], None]], Awaitable[None]]


class _ConnectSink:
    """The Connect stream's writes are awaited: every batch goes through the outbox's writer."""

    def __init__(self, context: aio.ServicerContext) -> None:  # type: ignore[type-arg]
        self.send = context.write

    def try_write(self, message: pb.RouterMessage) -> bool:
        return False


class RouterServicer(pb_grpc.RouterServicer):
    def __init__(self, ownership: Ownership, publisher: Publisher, metrics: RouterMetrics,
                 *, link_queue_max: int) -> None:
        self._own = ownership
        self._pub = publisher
        self._m = metrics
        self._link_queue_max = link_queue_max

    async def Connect(  # type: ignore[override]
        self, request_iterator: object, context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> None:
        first = await context.read()
        if first is EOF or not first.HasField("hello") or not first.hello.edge_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")

        async def read(on_messages: Callable[[list[pb.EdgeMessage]], None]) -> None:
            while (message := await context.read()) is not EOF:
                on_messages([message])

        await self.serve_edge(self.new_link(first.hello.edge_id), read, _ConnectSink(context))

    def new_link(self, edge_id: str) -> EdgeLink:
        return EdgeLink(edge_id, self._link_queue_max)

    async def serve_edge(self, link: EdgeLink, read: Read, sink: BatchSink[pb.RouterMessage]) -> None:
        """Serve one edge whose hello was accepted, over a Connect stream or a stream link:
        `read` hands over the edge's messages until the stream ends, `sink` takes the link's
        batches.
        Returns when either direction ends; the edge's attaches are dropped then."""
        previous = self._own.links.get(link.edge_id)
        if previous is not None:
            previous.close()  # a reconnecting edge replaces its old stream
        self._own.links[link.edge_id] = link
        self._m.edges.set(len(self._own.links))
        log.info("edge_connected", edge_id=link.edge_id)
        try:
            # One task reads upstream, one writes downstream (when a batch cannot be written
            # at once); when either ends, the call ends.
            await first_completed(self._read(link, read), link.outbox.run(sink))
        finally:
            link.close()
            self._own.drop_link(link)
            self._m.edges.set(len(self._own.links))
            if link.broken:
                self._m.dropped_links.inc()
            log.info("edge_disconnected", edge_id=link.edge_id, overflowed=link.broken)

    async def _read(self, link: EdgeLink, read: Read) -> None:
        def on_messages(messages: list[pb.EdgeMessage]) -> None:
            for message in messages:
                self._handle(link, message)

        await read(on_messages)

    def _handle(self, link: EdgeLink, message: pb.EdgeMessage) -> None:
        """Nothing here waits: publishes go to their pipelines, attaches are answered at once."""
        kind = message.WhichOneof("kind")
        if kind == "batch":
            attaching: list[str] = []  # consecutive attaches of a batch: one attach, one reply
            for m in message.batch.messages:
                if m.HasField("attach"):
                    attaching += m.attach.channels
                    continue
                if attaching:
                    self._attach(link, attaching)
                    attaching = []
                self._handle(link, m)
            if attaching:
                self._attach(link, attaching)
        elif kind == "publish":
            def reply(ack: pb.PublishAck) -> None:
                link.send(pb.RouterMessage(ack=ack))

            self._pub.submit(message.publish, reply)
        elif kind == "attach":
            self._attach(link, list(message.attach.channels))
        elif kind == "detach":
            self._m.detaches.inc(len(message.detach.channels))
            self._own.detach(link, list(message.detach.channels))

    def _attach(self, link: EdgeLink, channels: list[str]) -> None:
        self._m.attaches.inc(len(channels))
        self._own.attach(link, channels)
        link.send(pb.RouterMessage(attached=pb.Attached(channels=channels)))

    async def Publish(self, request: pb.PublishRequest, context: aio.ServicerContext) -> pb.PublishAck:  # type: ignore[type-arg]
        return await self._pub.publish(request)

    async def Owner(self, request: pb.OwnerRequest, context: aio.ServicerContext) -> pb.OwnerResponse:  # type: ignore[type-arg]
        edges = sorted(link.edge_id for link in await self._own.targets(request.channel))
        return pb.OwnerResponse(router_id=self._own.owner(request.channel), edges=edges,
                                published=self._pub.published.get(request.channel, 0))

    async def Stats(self, request: pb.StatsRequest, context: aio.ServicerContext) -> pb.StatsResponse:  # type: ignore[type-arg]
        return pb.StatsResponse(
            router_id=self._own.node_id,
            owned_channels=sorted(c for c in self._pub.published if self._own.owns(c)),
            published_total=sum(self._pub.published.values()),
            edges_connected=len(self._own.links),
        )
