"""Local fan-out at the edge: channel -> subscribed connections, in offset order.

Each delivery from a router is decoded once and handed to every local subscriber. Per channel
the hub keeps the last offset delivered and the epoch: duplicates are dropped, and on a gap the
missing range is read from history before going on, so even clients that know nothing of
offsets get a complete, ordered stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.history_client import HistoryCallError, HistoryClient
from services.common.tasks import cancel_and_wait
from services.edge.metrics import EdgeMetrics
from services.edge.routing_client import RouterPool
from services.edge.wsproto import text_frame

log = structlog.get_logger("switchboard.edge")
REPAIR_PAGE = 500


class Subscriber(Protocol):
    def push(self, frame: bytes, priority: int, channel: str, offset: int,
             accepted: float = 0.0) -> None:
        """Send or queue a prepared WebSocket frame (wsproto.text_frame); must not block
        (overflow closes the subscriber). `accepted` is when
        its publish was accepted (unix seconds; 0 for repairs), for the delivery latency."""
        ...


@dataclass
class ChannelState:
    subscribers: set[Subscriber] = field(default_factory=set)
    last_offset: int = 0
    epoch: str = ""
    repairing: bool = False
    pending: list[pb.Delivery] = field(default_factory=list)
    resync: bool = False       # read up to the newest offset once the running repair is done
    overflowed: bool = False   # deliveries were dropped while repairing (pending was full)
    attached: asyncio.Future[None] | None = None


class Hub:
    def __init__(self, pool: RouterPool, history: HistoryClient, metrics: EdgeMetrics,
                 *, pending_max: int, attach_timeout_s: float) -> None:
        self._pool = pool
        self._history = history
        self._m = metrics
        self._pending_max = pending_max
        self._attach_timeout_s = attach_timeout_s
        self.channels: dict[str, ChannelState] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, sub: Subscriber, channel: str) -> ChannelState:
        """Add a subscriber; the first one of a channel attaches it to its owner router and
        every later one waits for that, so a subscription is live when this returns."""
        state = self.channels.get(channel)
        if state is None:
            state = self.channels[channel] = ChannelState()
            state.attached = asyncio.get_running_loop().create_future()
            state.subscribers.add(sub)
            ok = await self._pool.attach(channel, self._attach_timeout_s)
            if not ok:
                log.warning("attach_timeout", channel=channel)
            if not state.attached.done():
                state.attached.set_result(None)
            return state
        state.subscribers.add(sub)
        if state.attached is not None and not state.attached.done():
            await asyncio.shield(state.attached)
        return state

    def unsubscribe(self, sub: Subscriber, channels: Iterable[str]) -> None:
        for channel in channels:
            state = self.channels.get(channel)
            if state is None:
                continue
            state.subscribers.discard(sub)
            if not state.subscribers and self.channels.get(channel) is state:
                del self.channels[channel]
                self._pool.detach(channel)
                if state.attached is not None and not state.attached.done():
                    state.attached.set_result(None)

    def on_delivery(self, d: pb.Delivery) -> None:
        self._m.deliveries.inc()
        state = self.channels.get(d.channel)
        if state is None:
            return
        if d.offset == 0:  # ephemeral: no order, no history
            self._fan_out(state, d)
            return
        if state.repairing:
            if len(state.pending) < self._pending_max:
                state.pending.append(d)
            else:  # bounded: what is dropped here is read from history by the next repair
                state.overflowed = True
                self._m.repair_overflow.inc()
            return
        self._in_order(d.channel, state, d)

    def _in_order(self, channel: str, state: ChannelState, d: pb.Delivery) -> None:
        if d.epoch != state.epoch or state.last_offset == 0:
            if state.epoch and d.epoch != state.epoch:
                log.warning("channel_epoch_changed", channel=channel, old=state.epoch, new=d.epoch)
            state.epoch, state.last_offset = d.epoch, d.offset
            self._fan_out(state, d)
        elif d.offset <= state.last_offset:
            self._m.duplicates.inc()
        elif d.offset == state.last_offset + 1:
            state.last_offset = d.offset
            self._fan_out(state, d)
        else:
            state.pending.append(d)
            self._start_repair(channel, state)

    def resync(self, channels: list[str]) -> None:
        """After (re)attaching channels to a router: deliver from history whatever was appended
        while this edge was not attached (a dead owner, a move), even if nothing follows it."""
        for channel in channels:
            state = self.channels.get(channel)
            if state is None or not state.last_offset:
                continue
            if state.repairing:
                state.resync = True  # the running repair stops at its target: go on after it
            else:
                self._start_repair(channel, state)

    def _start_repair(self, channel: str, state: ChannelState) -> None:
        state.repairing = True
        task = asyncio.create_task(self._repair(channel, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, channel: str, state: ChannelState) -> None:
        """Read the missing range from history, deliver it, then the deliveries held meanwhile.
        With nothing held (a resync), read up to the channel's newest offset."""
        target = min(d.offset for d in state.pending) - 1 if state.pending else None
        result = "ok"
        try:
            while target is None or state.last_offset < target:
                got = await self._history.read(channel, state.last_offset, epoch=state.epoch,
                                               limit=REPAIR_PAGE)
                if target is None and not got.epoch_changed:
                    target = got.top_offset
                    if state.last_offset >= target:
                        result = "current"
                        break
                if got.epoch_changed or not got.events or target is None:
                    result = "incomplete"
                    break
                for ev in got.events:
                    if state.last_offset < ev.offset <= target:
                        state.last_offset = ev.offset
                        self._fan_out(state, pb.Delivery(channel=channel, offset=ev.offset,
                                                         epoch=got.epoch, frame=ev.frame,
                                                         priority=ev.priority))
                if not got.complete:
                    result = "incomplete"
                    break
        except HistoryCallError as e:
            result = "failed"
            log.warning("gap_repair_failed", channel=channel, error=str(e))
        except asyncio.CancelledError:
            result = "cancelled"  # shutting down: hand nothing on, start nothing new
            raise
        finally:
            self._m.gap_repairs.labels(result).inc()
            if result != "cancelled":
                self._after_repair(channel, state, result)

    def _after_repair(self, channel: str, state: ChannelState, result: str) -> None:
        """Hand on the deliveries held during a repair, then catch up once more if a resync was
        asked for meanwhile or held deliveries were dropped."""
        pending, state.pending = sorted(state.pending, key=lambda d: d.offset), []
        state.repairing = False
        ahead = [d.offset for d in pending if d.offset > state.last_offset]
        if result not in ("ok", "current") and ahead:
            # Go on from the first held delivery not yet delivered: the gap is reported, not
            # hidden. (From a late duplicate held meanwhile, it would be delivered again.)
            state.last_offset = ahead[0] - 1
        for d in pending:
            if not state.repairing:
                self._in_order(channel, state, d)
            else:
                state.pending.append(d)
        if (state.resync or state.overflowed) and not state.repairing and result != "failed":
            state.resync = state.overflowed = False
            self._start_repair(channel, state)

    def _fan_out(self, state: ChannelState, d: pb.Delivery) -> None:
        frame = text_frame(d.frame)  # the WebSocket frame, built once for every subscriber
        accepted = d.accepted_unix_us / 1e6
        for sub in list(state.subscribers):
            sub.push(frame, d.priority, d.channel, d.offset, accepted)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            await cancel_and_wait(task)
