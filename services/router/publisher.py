"""The publish path: forward to the owner, or append to history in per-channel order and fan out.

Per channel, publishes queue in a bounded pipeline with at most one append in flight: a batch is
appended to the channel's history stream (the store's script is the single ordering point: it
assigns offsets; the router stores it itself or through a history node, see appender.py), then
each event is sent once to every edge that needs it, then the next batch leaves. The pipeline is
driven by the append's callback, not by a task of its own: a publish costs no task and no future.
A durable publish is acknowledged only after the history stream holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc import aio

from services.common import wire
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.history_client import HistoryCallError
from services.common.membership import MemberWatcher
from services.common.rpc import credential_metadata, insecure_channel
from services.common.telemetry import GrpcMetrics
from services.router.appender import Appender, BatchAppendClient
from services.router.errors import InvalidPublishError, OverloadedError, RouterError
from services.router.links import EdgeLink
from services.router.metrics import RouterMetrics
from services.router.ownership import Ownership

log = structlog.get_logger("switchboard.router")
MAX_HOPS = 2
MAX_EVENTS_PER_APPEND_CALL = 1_000  # history's limit per channel; the batch call is split there
AckCallback = Callable[[pb.PublishAck], None]


_Batch = list[tuple[pb.PublishRequest, AckCallback]]


@dataclass
class _Pipeline:
    items: deque[tuple[pb.PublishRequest, AckCallback]] = field(default_factory=deque)
    busy: bool = False  # a batch is being appended or fanned out


def events_of(request: pb.PublishRequest) -> list[hpb.Event]:
    """A request's events in order: `event`, then the sender's further events in `more`."""
    return [request.event, *request.more]


def error_ack(request: pb.PublishRequest, err: RouterError) -> pb.PublishAck:
    return pb.PublishAck(request_id=request.request_id, error_code=err.code, error_message=str(err))


class Publisher:
    def __init__(self, ownership: Ownership, history: BatchAppendClient, routers: MemberWatcher,
                 metrics: RouterMetrics, *, service_token: str, timeout_s: float,
                 batch_max: int, pipeline_max: int, grpc_metrics: GrpcMetrics | None = None) -> None:
        self._own = ownership
        self._grpc_metrics = grpc_metrics
        self._appender = Appender(history, max_events=MAX_EVENTS_PER_APPEND_CALL)
        self._routers = routers
        self._m = metrics
        self._metadata = credential_metadata(service_token)
        self._timeout_s = timeout_s
        self._batch_max = batch_max
        self._pipeline_max = pipeline_max
        self._pipelines: dict[str, _Pipeline] = {}
        self._peer_channels: dict[str, aio.Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.published: dict[str, int] = {}
        self._drained = asyncio.Event()  # no pipeline left (waited for by aclose)
        # Counter children looked up once (prometheus-client's labels() is costly per publish).
        self._published_ok = metrics.publishes.labels("ok")
        self._published_dup = metrics.publishes.labels("duplicate")

    # ---- entry points ----------------------------------------------------------------------

    def submit(self, request: pb.PublishRequest, done: AckCallback) -> None:
        """Publish; `done(ack)` is called exactly once, from the event loop."""
        if not request.accepted_unix_us:  # from a backend, not an edge: accepted now
            request.accepted_unix_us = time.time_ns() // 1000
        start = time.perf_counter()
        forwarding = self._should_forward(request)

        def timed(ack: pb.PublishAck) -> None:
            outcome = ("error" if ack.error_code else "forwarded" if forwarding
                       else "ephemeral" if request.ephemeral
                       else "duplicate" if ack.duplicate else "ok")
            self._m.publish_seconds.labels(outcome).observe(time.perf_counter() - start)
            done(ack)

        self._submit(request, timed)

    def _should_forward(self, request: pb.PublishRequest) -> bool:
        return not self._own.owns(request.channel) and request.hops < MAX_HOPS

    def _submit(self, request: pb.PublishRequest, done: AckCallback) -> None:
        if not request.channel or not all(wire.valid_body(ev.body) for ev in events_of(request)):
            self._m.publishes.labels("invalid").inc()
            done(error_ack(request, InvalidPublishError("event body must be a JSON object")))
            return
        if self._should_forward(request):
            self._spawn(self._forward(request, done))
            return
        if request.ephemeral:
            self._fan_out(request.channel, pb.Delivery(
                channel=request.channel, frame=request.event.body,
                priority=request.event.priority, accepted_unix_us=request.accepted_unix_us))
            self._m.publishes.labels("ephemeral").inc()
            done(pb.PublishAck(request_id=request.request_id))
            return
        pipe = self._pipelines.get(request.channel)
        if pipe is None:
            pipe = self._pipelines[request.channel] = _Pipeline()
        if len(pipe.items) >= self._pipeline_max:
            self._m.publishes.labels("overloaded").inc()
            done(error_ack(request, OverloadedError("channel publish queue is full")))
            return
        pipe.items.append((request, done))
        if not pipe.busy:
            self._next_batch(request.channel, pipe)

    async def publish(self, request: pb.PublishRequest) -> pb.PublishAck:
        fut: asyncio.Future[pb.PublishAck] = asyncio.get_running_loop().create_future()

        def resolve(ack: pb.PublishAck) -> None:
            if not fut.done():
                fut.set_result(ack)

        self.submit(request, resolve)
        return await fut

    # ---- owner path ------------------------------------------------------------------------

    def _next_batch(self, channel: str, pipe: _Pipeline) -> None:
        """Append the channel's next batch, or retire its pipeline when nothing is queued."""
        if not pipe.items:
            pipe.busy = False
            if self._pipelines.get(channel) is pipe:
                del self._pipelines[channel]
                if not self._pipelines:
                    self._drained.set()
            return
        # Up to batch_max events per append; a request's events are never split.
        batch = [pipe.items.popleft()]
        events = len(batch[0][0].more) + 1
        while pipe.items and events + len(pipe.items[0][0].more) + 1 <= self._batch_max:
            batch.append(pipe.items.popleft())
            events += len(batch[-1][0].more) + 1
        pipe.busy = True
        start = time.perf_counter()

        def appended(outcome: hpb.AppendResponse | HistoryCallError) -> None:
            self._m.append_seconds.observe(time.perf_counter() - start)
            self._appended(channel, pipe, batch, outcome)

        self._appender.submit(channel, [ev for req, _ in batch for ev in events_of(req)], appended)

    def _appended(self, channel: str, pipe: _Pipeline, batch: _Batch,
                  outcome: hpb.AppendResponse | HistoryCallError) -> None:
        targets: list[EdgeLink] = []
        if not isinstance(outcome, HistoryCallError):
            found = self._own.targets_now(channel)
            if found is None:  # the stored edge set must be read first
                self._spawn(self._appended_after_load(channel, pipe, batch, outcome))
                return
            targets = found
        self._answer(channel, pipe, batch, outcome, targets)

    async def _appended_after_load(self, channel: str, pipe: _Pipeline, batch: _Batch,
                                   resp: hpb.AppendResponse) -> None:
        try:
            targets = await self._own.targets(channel)
        except BaseException:  # cancelled (shutdown): the pipeline still moves on
            self._next_batch(channel, pipe)
            raise
        self._answer(channel, pipe, batch, resp, targets)

    def _answer(self, channel: str, pipe: _Pipeline, batch: _Batch,
                outcome: hpb.AppendResponse | HistoryCallError, targets: list[EdgeLink]) -> None:
        """Fan the stored events out and acknowledge them (or fail the batch), then let the
        channel's next batch leave, whatever happened here."""
        try:
            if isinstance(outcome, HistoryCallError):
                self._m.publishes.labels(outcome.code).inc(len(batch))
                log.warning("append_failed", channel=channel, error=str(outcome), requests=len(batch))
                for req, done in batch:
                    done(pb.PublishAck(request_id=req.request_id, error_code=outcome.code,
                                       error_message=str(outcome)))
            else:
                self._fan_out_stored(channel, batch, outcome, targets)
        except Exception:
            log.exception("publish_batch_failed", channel=channel)
        self._next_batch(channel, pipe)

    def _fan_out_stored(self, channel: str, batch: _Batch, resp: hpb.AppendResponse,
                        targets: list[EdgeLink]) -> None:
        results = iter(resp.results)
        ok = dup = 0
        for req, done in batch:
            stored: list[hpb.Appended] = []
            for ev in events_of(req):
                res = next(results)
                stored.append(res)
                # Duplicates are delivered again: edges drop what they already have by offset,
                # and a retry after a crash between append and fan-out must still reach them.
                delivery = pb.RouterMessage(delivery=pb.Delivery(
                    channel=channel, offset=res.offset, epoch=resp.epoch,
                    frame=wire.seal(ev.body, res.offset, resp.epoch),
                    priority=ev.priority, accepted_unix_us=req.accepted_unix_us))
                for link in targets:
                    link.send(delivery)
                self._m.fanout.observe(len(targets))
                if res.duplicate:
                    dup += 1
                else:
                    ok += 1
            first = stored[0]
            done(pb.PublishAck(request_id=req.request_id, offset=first.offset,
                               epoch=resp.epoch, duplicate=first.duplicate, more=stored[1:]))
        self._m.deliveries.inc((ok + dup) * len(targets))
        if ok:
            self._published_ok.inc(ok)
        if dup:
            self._published_dup.inc(dup)
        self.published[channel] = self.published.get(channel, 0) + len(resp.results)

    def _fan_out(self, channel: str, delivery: pb.Delivery) -> None:
        message = pb.RouterMessage(delivery=delivery)

        async def send() -> None:
            targets = await self._own.targets(channel)
            for link in targets:
                link.send(message)
            self._m.deliveries.inc(len(targets))
            self._m.fanout.observe(len(targets))

        self._spawn(send())

    # ---- forwarding ------------------------------------------------------------------------

    async def _forward(self, request: pb.PublishRequest, done: AckCallback) -> None:
        owner = self._own.owner(request.channel)
        address = self._routers.members.get(owner)
        forwarded = pb.PublishRequest()
        forwarded.CopyFrom(request)
        forwarded.hops = request.hops + 1
        if address is None:
            forwarded.hops = MAX_HOPS  # owner unknown here: handle it locally
            self._submit(forwarded, done)
            return
        ch = self._peer_channels.get(address)
        if ch is None:
            ch = self._peer_channels[address] = insecure_channel(address, self._grpc_metrics)
        try:
            ack: pb.PublishAck = await pb_grpc.RouterStub(ch).Publish(
                forwarded, timeout=self._timeout_s, metadata=self._metadata)
            self._m.forwards.labels("ok").inc()
        except aio.AioRpcError as e:
            self._m.forwards.labels("failed").inc()
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # The owner is gone or stalled: take the publish ourselves (the store orders it).
                forwarded.hops = MAX_HOPS
                self._submit(forwarded, done)
                return
            ack = error_ack(request, RouterError(e.details() or str(e.code())))
        ack.request_id = request.request_id
        done(ack)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace_s: float) -> None:
        """Let queued publishes finish within grace_s; then what is left is answered with a
        retryable error (the appender refuses further appends) and tasks are cancelled."""
        deadline = time.monotonic() + grace_s
        if self._pipelines:
            self._drained.clear()  # set when the last pipeline retires
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._drained.wait()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        await self._appender.aclose()  # answers what it holds: the pipelines run dry with errors
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        channels, self._peer_channels = self._peer_channels, {}
        for ch in channels.values():
            await ch.close(None)
