"""Local fan-out at the edge: channel -> subscribed connections, in offset order.

Each delivery from a router is handed as it is to every local subscriber. Per channel the hub
keeps a `catchup.ChannelSync` (the position and the repair state) and acts on its verdicts:
duplicates are dropped, and on a gap the missing range is read from history before going on,
so even clients that know nothing of offsets get a complete, ordered stream. The decisions are
in `catchup.py`; this module does the I/O (history reads, repair tasks, metrics, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from services.common.history_client import HistoryCallError
from services.common.tasks import cancel_and_wait
from services.edge.catchup import (
    DELIVER,
    DUPLICATE,
    EPOCH_CHANGED,
    GAP,
    OVERFLOWED,
    ChannelSync,
    RepairResult,
    Verdict,
)
from services.edge.domain import Delivery
from services.edge.history_reader import HistoryReader
from services.edge.metrics import EdgeMetrics
from services.edge.routing_client import RouterPool
from services.edge.sendqueue import lane_of
from services.edge.wsproto import text_frame

log = structlog.get_logger("switchboard.edge")
REPAIR_PAGE = 500


class Subscriber(Protocol):
    def offer(self, frame: bytes, priority: int, channel: str, offset: int,
              accepted: float = 0.0) -> bool:
        """Send or queue a prepared WebSocket frame (wsproto.text_frame); must not block
        (overflow closes the subscriber). `accepted` is when its publish was accepted (unix
        seconds; 0 for repairs), for the delivery latency. True: the frame was written to the
        socket in this call and the hub counts it (EdgeMetrics.written, once per fan-out)."""
        ...


@dataclass(eq=False)
class ChannelState:
    sync: ChannelSync
    subscribers: set[Subscriber] = field(default_factory=set)
    attaching: bool = False  # until its first subscriber's wait for the attach ended


Wait = tuple[ChannelState, "asyncio.Future[bool]"]  # a channel and its attach's answer


class Hub:
    def __init__(self, pool: RouterPool, history: HistoryReader, metrics: EdgeMetrics,
                 *, pending_max: int, attach_timeout_s: float) -> None:
        self._pool = pool
        self._history = history
        self._m = metrics
        self._pending_max = pending_max
        self._attach_timeout_s = attach_timeout_s
        self.channels: dict[str, ChannelState] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, sub: Subscriber, channels: Sequence[str]) -> list[ChannelState]:
        """Add a subscriber to channels. The first subscriber of a channel attaches it to its
        owner router; this returns once every channel is live (attached), so events appended
        from then on reach the subscriber. A channel whose attach times out (no router up) is
        attached when its owner's stream opens, and later subscribers no longer wait for it.
        Channels already live cost no wait at all (a connection storm mostly subscribes those)."""
        states, waits = self.subscribe_nowait(sub, channels)
        if waits:
            await self.wait_attached(waits)
        return states

    def subscribe_nowait(self, sub: Subscriber, channels: Sequence[str]) -> tuple[list[ChannelState], list[Wait]]:
        """`subscribe` without the wait: the states, and the attaches to wait for (with
        `wait_attached` or `when_attached`) before the channels are live."""
        states: list[ChannelState] = []
        waits: list[Wait] = []
        for channel in channels:
            state = self.channels.get(channel)
            if state is None:
                state = self.channels[channel] = ChannelState(ChannelSync(channel, self._pending_max),
                                                              attaching=True)
                waits.append((state, self._pool.attach_soon(channel)))
            elif state.attaching:
                waits.append((state, self._pool.attach_waiter(channel)))
            state.subscribers.add(sub)
            states.append(state)
        return states, waits

    async def wait_attached(self, waits: list[Wait]) -> None:
        # Every subscriber awaits futures of its own, directly: its task wakes in the loop
        # iteration after the router's answer was read (asyncio.wait would add one more), and
        # the timeout cancels only its own.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._attach_timeout_s):
                for _, fut in waits:
                    await fut
        self._waited(waits)

    def when_attached(self, waits: list[Wait], callback: Callable[[], None]) -> Callable[[], object]:
        """`wait_attached` without a task: `callback` runs once every attach is answered or the
        attach timeout has passed. Returns a function that cancels the wait (callback not run)."""
        left = len(waits)
        timer: asyncio.TimerHandle | None = None

        def stop() -> bool:
            """End the wait (False: it had ended already, by the timeout or a cancel)."""
            nonlocal timer
            if timer is None:
                return False
            timer.cancel()
            timer = None
            for _, fut in waits:
                fut.cancel()  # the timeout's: no-op on an answered future
            return True

        def finish() -> None:
            if stop():
                self._waited(waits)
                callback()

        def answered(_: asyncio.Future[bool]) -> None:
            nonlocal left
            left -= 1
            if not left:
                finish()

        timer = asyncio.get_running_loop().call_later(self._attach_timeout_s, finish)
        for _, fut in waits:
            fut.add_done_callback(answered)
        return stop

    def _waited(self, waits: list[Wait]) -> None:
        for state, fut in waits:
            if state.attaching and (fut.cancelled() or not fut.done()):
                log.warning("attach_timeout", channel=state.sync.channel)
            state.attaching = False  # live, or given up on: later subscribers do not wait

    def unsubscribe(self, sub: Subscriber, channels: Iterable[str]) -> None:
        for channel in channels:
            state = self.channels.get(channel)
            if state is None:
                continue
            state.subscribers.discard(sub)
            if not state.subscribers and self.channels.get(channel) is state:
                del self.channels[channel]
                self._pool.detach(channel)  # also ends the attach's wait, if any

    def on_delivery(self, d: Delivery) -> None:
        self._m.deliveries.inc()
        state = self.channels.get(d.channel)
        if state is None:
            return
        verdict = state.sync.receive(d)
        if verdict is DELIVER:
            self._fan_out(state, d)
        else:
            self._act(state, d, verdict)

    def _act(self, state: ChannelState, d: Delivery, verdict: Verdict) -> None:
        if verdict is DELIVER:
            self._fan_out(state, d)
        elif verdict is EPOCH_CHANGED:
            log.warning("channel_epoch_changed", channel=d.channel, old=state.sync.previous_epoch,
                        new=d.epoch)
            self._fan_out(state, d)
        elif verdict is DUPLICATE:
            self._m.duplicates.inc()
        elif verdict is GAP:
            self._start_repair(state)
        elif verdict is OVERFLOWED:
            self._m.repair_overflow.inc()

    def resync(self, channels: list[str]) -> None:
        """After (re)attaching channels to a router: deliver from history whatever was appended
        while this edge was not attached (a dead owner, a move), even if nothing follows it."""
        for channel in channels:
            state = self.channels.get(channel)
            if state is not None and state.sync.resync():
                self._start_repair(state)

    def _start_repair(self, state: ChannelState) -> None:
        task = asyncio.create_task(self._repair(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, state: ChannelState) -> None:
        """Read the missing range from history, deliver it, then the deliveries held meanwhile."""
        sync = state.sync
        repair = sync.start_repair()
        result = RepairResult.OK
        try:
            while (since := repair.next_read()) is not None:
                page = await self._history.read(sync.channel, since.offset, epoch=since.epoch,
                                                limit=REPAIR_PAGE)
                for d in repair.take(page):
                    self._fan_out(state, d)
            result = repair.result or RepairResult.OK
        except HistoryCallError as e:
            result = RepairResult.FAILED
            log.warning("gap_repair_failed", channel=sync.channel, error=str(e))
        except asyncio.CancelledError:
            result = RepairResult.CANCELLED  # shutting down: hand nothing on, start nothing new
            raise
        finally:
            self._m.gap_repairs.labels(result).inc()
            if result != RepairResult.CANCELLED:
                self._after_repair(state, result)

    def _after_repair(self, state: ChannelState, result: RepairResult) -> None:
        """Hand on the deliveries held during a repair, then catch up once more if asked."""
        sync = state.sync
        for d in sync.end_repair(result):
            self._act(state, d, sync.take_held(d))
        if sync.repair_again(result):
            self._start_repair(state)

    def _fan_out(self, state: ChannelState, d: Delivery) -> None:
        frame = text_frame(d.frame)  # the WebSocket frame, built once for every subscriber
        written = 0
        for sub in list(state.subscribers):
            if sub.offer(frame, d.priority, d.channel, d.offset, d.accepted):
                written += 1
        if written:  # counted once: the same frame, lane and latency for every one of them
            self._m.written(lane_of(d.priority, d.offset), len(frame), written, d.accepted)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            await cancel_and_wait(task)
