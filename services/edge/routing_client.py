"""The edge's adapter to the routers: one stream per live router.

The stream is a stream link (length-prefixed protobuf frames over TCP, services/common/framing.py)
to routers that advertise one (membership role LINK_ROLE), else the gRPC Connect stream: the same
messages, the same batching, the same dispatch either way.

Channels are attached to their owner (rendezvous hashing over the live routers); when the
router set changes, channels whose owner changed are detached from the old owner and attached
to the new one. Publishes go to the owner's stream, or to any connected router when the owner
is unreachable (routers forward to the owner or take the channel over); they are retried
until the publish deadline, and stay idempotent because every event carries its id.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]

from services.common.batching import Outbox
from services.common.errors import is_retryable
from services.common.framing import FrameProtocol, FrameSink
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.rpc import credential_metadata, insecure_channel
from services.common.sharding import OwnerCache
from services.common.tasks import cancel_and_wait, raise_if_cancel_lost
from services.common.telemetry import GrpcMetrics
from services.edge.domain import Delivery, Event, PublishResult
from services.edge.errors import (
    EdgeError,
    PublishRejectedError,
    PublishTimeoutError,
    UpstreamUnavailableError,
)
from services.edge.wsproto import CORK

log = structlog.get_logger("switchboard.edge")


class DeliverySink(Protocol):
    """What receives the routers' traffic on an edge (the hub), registered once at start."""

    def on_delivery(self, d: Delivery) -> None:
        """An event for a channel of this edge; must not block."""
        ...

    def resync(self, channels: list[str]) -> None:
        """These channels were (re)attached: catch up on what was appended meanwhile."""
        ...


class _NoSink:
    def on_delivery(self, d: Delivery) -> None:
        return None

    def resync(self, channels: list[str]) -> None:
        return None


ROUTER_SERVICE = "switchboard.routing.v1.Router"


class _Wire(Protocol):
    """One open stream to a router, whatever carries it: an outbox's sink, and a reader."""

    def try_write(self, message: pb.EdgeMessage) -> bool: ...

    async def send(self, message: pb.EdgeMessage) -> None: ...

    async def run(self, on_messages: Callable[[list[pb.RouterMessage]], None]) -> None:
        """Hand the router's messages to `on_messages` (which must not block) until the router
        ends the stream; raises when the stream fails."""
        ...


class _GrpcWire:
    def __init__(self, call: aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        self._call = call

    def try_write(self, message: pb.EdgeMessage) -> bool:
        return False  # the call's writes are awaited: every batch goes through the writer

    async def send(self, message: pb.EdgeMessage) -> None:
        await self._call.write(message)

    async def run(self, on_messages: Callable[[list[pb.RouterMessage]], None]) -> None:
        while (message := await self._call.read()) is not EOF:
            on_messages([message])  # type: ignore[list-item]


class _FrameWire(FrameSink):
    __slots__ = ()

    async def run(self, on_messages: Callable[[list[pb.RouterMessage]], None]) -> None:
        # From data_received: an attach's answer or an ack is acted on when it is read.
        await self._conn.serve(lambda frames: on_messages([pb.RouterMessage.FromString(f) for f in frames]))


@dataclass(frozen=True)
class LinkOptions:
    """How stream links to routers behave (settings link_*)."""

    max_frame_bytes: int
    heartbeat_s: float
    idle_timeout_s: float  # also bounds the connect and the wait for a full write buffer


HEARTBEAT = pb.EdgeMessage(batch=pb.EdgeBatch()).SerializeToString()
LINK_LOST = (OSError, TimeoutError, DecodeError)  # LinkClosedError is an OSError


class RouterLink:
    """One stream to one router, reconnected with jittered backoff until closed: a stream link
    (length-prefixed protobuf over TCP) when the router advertises one, else gRPC Connect."""

    def __init__(self, pool: RouterPool, router_id: str, address: str,
                 link_address: str | None = None) -> None:
        self.router_id = router_id
        self.address = address
        self.link_address = link_address
        self._pool = pool
        self._outbox = self._new_outbox()
        self._pending: dict[int, asyncio.Future[pb.PublishAck]] = {}
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._received = False

    @property
    def endpoint(self) -> tuple[str, str | None]:
        return self.address, self.link_address

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"router-link-{self.router_id}")

    def send(self, message: pb.EdgeMessage) -> bool:
        """Queue a message if the stream is up; attaches are re-sent on every (re)connect."""
        return self.connected.is_set() and self._outbox.put(message)

    def _new_outbox(self) -> Outbox[pb.EdgeMessage, pb.EdgeMessage]:
        return Outbox(self._pool.queue_max, _size_of, _pack)

    def publish(self, request: pb.PublishRequest) -> asyncio.Future[pb.PublishAck]:
        fut: asyncio.Future[pb.PublishAck] = asyncio.get_running_loop().create_future()
        if not self.send(pb.EdgeMessage(publish=request)):
            fut.set_exception(UpstreamUnavailableError(f"router {self.router_id} not connected"))
            return fut
        self._pending[request.request_id] = fut
        return fut

    def forget(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    async def _run(self) -> None:
        attempt = 0
        channel = None if self.link_address else insecure_channel(self.address, self._pool.grpc_metrics)
        try:
            while True:
                self._received = False
                if channel is None:
                    await self._link_session()
                else:
                    await self._grpc_session(channel)
                raise_if_cancel_lost()  # a cancelled connect can come back as a connection error
                attempt = 0 if self._received else attempt + 1
                cap = min(self._pool.reconnect_max_s, 0.05 * 2 ** min(attempt + 1, 8))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter
        finally:
            if channel is not None:
                await channel.close(None)

    async def _link_session(self) -> None:
        opts = self._pool.link
        assert opts is not None and self.link_address is not None
        host, _, port = self.link_address.rpartition(":")
        conn: FrameProtocol | None = None
        try:
            async with asyncio.timeout(opts.idle_timeout_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: FrameProtocol(max_frame_bytes=opts.max_frame_bytes, heartbeat=HEARTBEAT,
                                          heartbeat_s=opts.heartbeat_s, idle_timeout_s=opts.idle_timeout_s),
                    host.strip("[]"), int(port))
            hello = pb.Hello(edge_id=self._pool.edge_id, token=self._pool.service_token)
            await self._session(_FrameWire(conn), hello)
        except LINK_LOST as e:
            log.info("router_link_lost", router_id=self.router_id, error=str(e) or type(e).__name__)
        finally:
            self._disconnected()
            if conn is not None:
                conn.abort()

    async def _grpc_session(self, channel: aio.Channel) -> None:
        # The Connect stream is timed here, not by a channel interceptor, so that its
        # read()/write() stay the plain call's (no extra task per message).
        start, code = time.perf_counter(), "UNKNOWN"
        call = pb_grpc.RouterStub(channel).Connect(metadata=self._pool.metadata)  # type: ignore[call-arg]
        try:
            await self._session(_GrpcWire(call), pb.Hello(edge_id=self._pool.edge_id))
            code = "OK"
        except aio.AioRpcError as e:
            code = e.code().name
            if e.code() != grpc.StatusCode.CANCELLED:
                log.info("router_stream_lost", router_id=self.router_id, code=e.code().name)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            call.cancel()
            self._disconnected()
            if self._pool.grpc_metrics is not None:
                self._pool.grpc_metrics.client_done(ROUTER_SERVICE, "Connect", code,
                                                    time.perf_counter() - start)

    async def _session(self, wire: _Wire, hello: pb.Hello) -> None:
        await wire.send(pb.EdgeMessage(hello=hello))
        attached = self._pool.channels_on(self.router_id)
        if attached:
            await wire.send(pb.EdgeMessage(attach=pb.Attach(channels=attached)))
        self._outbox = self._new_outbox()  # nothing of an earlier stream is sent on this one
        self.connected.set()
        if attached:
            self._pool.sink.resync(attached)
        log.info("router_stream_open", router_id=self.router_id, channels=len(attached),
                 transport="grpc" if isinstance(wire, _GrpcWire) else "link")
        writer = asyncio.create_task(self._outbox.run(wire))
        try:
            await wire.run(self._on_messages)
        finally:
            await cancel_and_wait(writer)

    def _on_messages(self, messages: list[pb.RouterMessage]) -> None:
        self._received = True
        for message in messages:
            self._dispatch(message)

    def _dispatch(self, message: pb.RouterMessage) -> None:
        if message.HasField("batch"):
            with CORK:  # a connection's frames of this batch leave in one write
                for m in message.batch.messages:
                    self._dispatch(m)
        elif message.HasField("delivery"):
            d = message.delivery  # converted once per edge, before any subscriber sees it
            self._pool.sink.on_delivery(Delivery(d.channel, d.offset, d.epoch, d.frame, d.priority,
                                                 d.accepted_unix_us / 1e6))
        elif message.HasField("attached"):
            self._pool.attached(message.attached.channels)
        elif message.HasField("ack"):
            fut = self._pending.pop(message.ack.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message.ack)

    def _disconnected(self) -> None:
        self.connected.clear()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(UpstreamUnavailableError(f"stream to {self.router_id} lost"))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)


def _event_pb(e: Event) -> hpb.Event:
    return hpb.Event(id=e.id, type=e.type, body=e.body, priority=e.priority)


def _size_of(message: pb.EdgeMessage) -> int:
    return len(message.publish.event.body) + 64


def _pack(batch: list[pb.EdgeMessage]) -> pb.EdgeMessage:
    return batch[0] if len(batch) == 1 else pb.EdgeMessage(batch=pb.EdgeBatch(messages=batch))


class RouterPool:
    def __init__(self, edge_id: str, *, service_token: str, queue_max: int, reconnect_max_s: float,
                 publish_timeout_s: float, grpc_metrics: GrpcMetrics | None = None,
                 link: LinkOptions | None = None) -> None:
        """`link`: dial a router's stream link where it advertises one; None: gRPC Connect only."""
        self.edge_id = edge_id
        self.grpc_metrics = grpc_metrics
        self.service_token = service_token
        self.metadata = credential_metadata(service_token)
        self.link = link
        self.sink: DeliverySink = _NoSink()
        self.queue_max = queue_max
        self.reconnect_max_s = reconnect_max_s
        self.publish_timeout_s = publish_timeout_s
        self.links: dict[str, RouterLink] = {}
        self.assigned: dict[str, str] = {}  # channel -> router id it is attached to
        self._ids = itertools.count(1)
        self._closing: set[asyncio.Task[None]] = set()
        self._attach_waiters: dict[str, list[asyncio.Future[bool]]] = {}
        self._owners = OwnerCache()  # channel -> owner among self.links (hashed once per router set)

    def register(self, sink: DeliverySink) -> None:
        """Send deliveries and re-attach notices to `sink` from now on (before any stream opens)."""
        self.sink = sink

    # ---- membership ------------------------------------------------------------------------

    def set_routers(self, members: dict[str, str], link_addresses: Mapping[str, str] = MappingProxyType({})) -> None:
        """Open streams to new routers, close those to gone ones, move channels to new owners.
        `link_addresses`: the routers' stream-link addresses (LINK_ROLE), used unless forced off."""
        endpoints = {r: (address, link_addresses.get(r) if self.link is not None else None)
                     for r, address in members.items()}
        for router_id in list(self.links):
            link = self.links[router_id]
            if endpoints.get(router_id) != link.endpoint:
                del self.links[router_id]
                task = asyncio.create_task(link.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        for router_id, (address, link_address) in endpoints.items():
            if router_id not in self.links:
                link = self.links[router_id] = RouterLink(self, router_id, address, link_address)
                link.start()
        self._owners.reset()
        moved = 0
        for channel, current in list(self.assigned.items()):
            owner = self.owner(channel)
            if owner is not None and owner != current:
                self._move(channel, current, owner)
                moved += 1
        if moved:
            log.info("channels_reassigned", moved=moved, routers=sorted(members))

    def _move(self, channel: str, old: str, new: str) -> None:
        old_link = self.links.get(old)
        if old_link is not None:
            old_link.send(pb.EdgeMessage(detach=pb.Detach(channels=[channel])))
        self.assigned[channel] = new
        if self.links[new].send(pb.EdgeMessage(attach=pb.Attach(channels=[channel]))):
            self.sink.resync([channel])

    def owner(self, channel: str) -> str | None:
        """The channel's owner among the routers this edge knows (None: no router)."""
        return self._owners.owner(channel, self.links)

    def channels_on(self, router_id: str) -> list[str]:
        return [c for c, r in self.assigned.items() if r == router_id]

    def ready(self) -> bool:
        return any(link.connected.is_set() for link in self.links.values())

    def connected_count(self) -> int:
        return sum(1 for link in self.links.values() if link.connected.is_set())

    # ---- channels --------------------------------------------------------------------------

    def attach_soon(self, channel: str) -> asyncio.Future[bool]:
        """Attach the channel to its owner; the future is True once the owner holds it, so
        that every event appended from then on reaches this edge. With no router up the channel
        stays assigned and is attached (and the future completed) when its owner's stream opens;
        a detach completes it with False. Attaches sent in one loop iteration travel as one
        batch. The future is the caller's own: cancelling it (a timeout) affects no one else."""
        owner = self.owner(channel)
        self.assigned[channel] = owner or ""
        fut = self.attach_waiter(channel, pending=True)
        if owner is not None:
            self.links[owner].send(pb.EdgeMessage(attach=pb.Attach(channels=[channel])))
        return fut

    def attach_waiter(self, channel: str, *, pending: bool = False) -> asyncio.Future[bool]:
        """Another future for the channel's attach in flight, completed like attach_soon's;
        True at once when no attach of the channel is waiting for its answer."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiters = self._attach_waiters.get(channel)
        if waiters is not None:
            waiters.append(fut)
        elif pending:
            self._attach_waiters[channel] = [fut]
        else:
            fut.set_result(True)
        return fut

    async def attach(self, channel: str, timeout_s: float) -> bool:
        """attach_soon, then wait for it: False on timeout (the channel stays assigned) or when
        a detach ended the wait."""
        fut = self.attach_soon(channel)
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            return False
        finally:
            waiters = self._attach_waiters.get(channel, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._attach_waiters.pop(channel, None)

    def attached(self, channels: Iterable[str]) -> None:
        for channel in channels:
            for fut in self._attach_waiters.pop(channel, ()):
                if not fut.done():
                    fut.set_result(True)

    def detach(self, channel: str) -> None:
        for fut in self._attach_waiters.pop(channel, ()):
            if not fut.done():
                fut.set_result(False)
        router_id = self.assigned.pop(channel, None)
        link = self.links.get(router_id or "")
        if link is not None:
            link.send(pb.EdgeMessage(detach=pb.Detach(channels=[channel])))

    # ---- publish ---------------------------------------------------------------------------

    async def publish(self, channel: str, event: Event, *, ephemeral: bool = False,
                      more: Sequence[Event] = ()) -> PublishResult:
        """Publish and wait for the ack, retried until the publish deadline: on a lost stream, on
        an answer whose code is retryable (common/errors.py: unavailable, busy, overloaded), and on
        a router that does not answer within a third of the deadline (stalled), which is then
        avoided. Retries carry the same event ids, so they are stored once; `more` events are
        stored right after `event`, all or none, in order. Raises
        PublishRejectedError (its code), PublishTimeoutError or UpstreamUnavailableError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_s
        attempt_s = max(self.publish_timeout_s / 3, 0.5)
        attempt = 0
        # Travels with the event (delivery latency): when the edge took it from its client.
        accepted_us = event.accepted_us or time.time_ns() // 1000
        avoid: set[str] = set()
        last: EdgeError = UpstreamUnavailableError("no router available")
        first, rest = _event_pb(event), [_event_pb(e) for e in more]
        while (remaining := deadline - loop.time()) > 0:
            link = self._pick(channel, attempt, avoid)
            if link is not None:
                request = pb.PublishRequest(request_id=next(self._ids), channel=channel,
                                            event=first, ephemeral=ephemeral,
                                            accepted_unix_us=accepted_us, more=rest)
                fut = link.publish(request)
                # A timer rather than asyncio.timeout: this runs once per publish.
                timer = loop.call_later(min(remaining, attempt_s), _time_out, fut)
                try:
                    try:
                        ack = await fut
                    finally:
                        timer.cancel()
                    if not ack.error_code:
                        return PublishResult(ack.offset, ack.epoch, ack.duplicate,
                                             tuple((a.offset, a.duplicate) for a in ack.more))
                    last = PublishRejectedError(ack.error_code, ack.error_message)
                    if not is_retryable(ack.error_code) or ephemeral:
                        raise last
                except UpstreamUnavailableError as e:
                    last = e
                except TimeoutError:
                    link.forget(request.request_id)
                    avoid.add(link.router_id)
                    last = PublishTimeoutError(f"router {link.router_id} did not answer in time")
            if ephemeral:
                break
            attempt += 1
            await asyncio.sleep(min(0.05 * 2 ** attempt, 0.5, max(deadline - loop.time(), 0)))
        if isinstance(last, PublishRejectedError | PublishTimeoutError):
            raise last
        raise UpstreamUnavailableError(f"publish not acknowledged: {last}")

    def _pick(self, channel: str, attempt: int, avoid: set[str]) -> RouterLink | None:
        """The owner's stream while it is up; else any other connected router, which forwards to
        the owner or takes the publish itself when the owner is unreachable."""
        owner = self.owner(channel)
        if (owner is not None and owner not in avoid and self.links[owner].connected.is_set()
                and attempt < 2):
            return self.links[owner]
        up = [link for link in self.links.values() if link.connected.is_set()]
        preferred = [link for link in up if link.router_id not in avoid]
        return random.choice(preferred or up) if up else None

    async def aclose(self) -> None:
        links, self.links = self.links, {}
        await asyncio.gather(*(link.aclose() for link in links.values()), *self._closing)


def _time_out(fut: asyncio.Future[pb.PublishAck]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
