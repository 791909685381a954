"""Catch-up decisions at the edge: stream order, gap repair and client recovery, without I/O.

Both catch-up paths of the edge decide here and do their I/O elsewhere:

- The hub keeps one `ChannelSync` per channel. `receive` says what to do with a delivery from a
  router (deliver, drop a duplicate, hold it while a repair runs, or hold it and repair a gap);
  a `Repair` says where to read history next and what of each page to deliver; `end_repair`
  hands back the deliveries held meanwhile, and `repair_again` whether to catch up once more.
- A connection keeps one `ClientRecovery` per channel a client recovers: whether history still
  covers the client's position (`first_page`), and what to replay next.

Nothing here awaits, starts tasks, logs or counts: callers act on the returned verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from services.edge.domain import Delivery, HistoryPage, StoredEvent


@dataclass(slots=True, frozen=True)
class StreamPosition:
    """A place in a channel's stream: the last offset seen, in the epoch it belongs to.
    Offsets count from 1 within an epoch; (0, "") is "nothing seen yet"."""

    offset: int
    epoch: str


class Verdict(Enum):
    """What to do with a delivery (`ChannelSync.receive`, `ChannelSync.take_held`)."""

    DELIVER = "deliver"                # next in order (or ephemeral): fan it out
    EPOCH_CHANGED = "epoch_changed"    # the channel restarted under a new epoch: fan it out
    DUPLICATE = "duplicate"            # already delivered: drop it
    HELD = "held"                      # a repair runs: kept until it ends
    OVERFLOWED = "overflowed"          # a repair runs and the held list is full: dropped, read later
    GAP = "gap"                        # offsets are missing: held, start a repair


DELIVER, EPOCH_CHANGED, DUPLICATE = Verdict.DELIVER, Verdict.EPOCH_CHANGED, Verdict.DUPLICATE
HELD, OVERFLOWED, GAP = Verdict.HELD, Verdict.OVERFLOWED, Verdict.GAP


class RepairResult(StrEnum):
    """How a repair ended (the `result` label of edge_gap_repairs_total)."""

    OK = "ok"                    # read up to its target
    CURRENT = "current"          # a resync found nothing new
    INCOMPLETE = "incomplete"    # history no longer holds the range, or the epoch changed
    FAILED = "failed"            # history could not be read
    CANCELLED = "cancelled"      # the edge is shutting down


class ChannelSync:
    """One channel's position at this edge and its repair state.

    The offset moves in place on the hot path (one per delivery); `position` is the same as a
    StreamPosition. While `repairing`, live deliveries are held (at most `pending_max`; beyond
    that they are dropped and `overflowed` makes the next repair read them from history).
    """

    __slots__ = ("channel", "epoch", "offset", "overflowed", "pending", "pending_max",
                 "previous_epoch", "repairing", "resync_asked")

    def __init__(self, channel: str, pending_max: int) -> None:
        self.channel = channel
        self.offset = 0
        self.epoch = ""
        self.previous_epoch = ""  # before the last EPOCH_CHANGED (for its log line)
        self.repairing = False
        self.pending: list[Delivery] = []
        self.pending_max = pending_max
        self.resync_asked = False  # read up to the newest offset once the running repair is done
        self.overflowed = False    # deliveries were dropped while repairing (pending was full)

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.offset, self.epoch)

    def receive(self, d: Delivery) -> Verdict:
        """A live delivery from a router."""
        if d.offset == 0:  # ephemeral: no order, no history
            return DELIVER
        if self.repairing:
            if len(self.pending) < self.pending_max:
                self.pending.append(d)
                return HELD
            self.overflowed = True  # bounded: what is dropped is read by the next repair
            return OVERFLOWED
        return self._in_order(d)

    def _in_order(self, d: Delivery) -> Verdict:
        if d.epoch != self.epoch or self.offset == 0:
            verdict = DELIVER
            if self.epoch and d.epoch != self.epoch:
                verdict, self.previous_epoch = EPOCH_CHANGED, self.epoch
            self.epoch, self.offset = d.epoch, d.offset
            return verdict
        if d.offset <= self.offset:
            return DUPLICATE
        if d.offset == self.offset + 1:
            self.offset = d.offset
            return DELIVER
        self.pending.append(d)
        self.repairing = True
        return GAP

    def resync(self) -> bool:
        """The channel was (re)attached to a router: True when a repair up to the newest offset
        must start now. Nothing seen yet: nothing to catch up on. A repair running: it stops at
        its target, so another one follows it (`repair_again`)."""
        if not self.offset:
            return False
        if self.repairing:
            self.resync_asked = True
            return False
        self.repairing = True
        return True

    def start_repair(self) -> Repair:
        """Begin the repair that `receive` (GAP) or `resync` asked for. Called when the repair's
        reads begin, so its target counts everything held until then."""
        return Repair(self)

    def end_repair(self, result: RepairResult) -> list[Delivery]:
        """The repair is over: the held deliveries, in offset order, to pass to `take_held` one
        by one. After an unsuccessful repair the stream goes on from the first held delivery not
        yet delivered: the gap is reported, not hidden. (From a late duplicate held meanwhile,
        it would be delivered again.)"""
        held, self.pending = sorted(self.pending, key=_offset_of), []
        self.repairing = False
        if result not in (RepairResult.OK, RepairResult.CURRENT):
            ahead = [d.offset for d in held if d.offset > self.offset]
            if ahead:
                self.offset = ahead[0] - 1
        return held

    def take_held(self, d: Delivery) -> Verdict:
        """One delivery held during the repair that just ended. Once a new gap is found among
        them, the rest are held for that repair (without the live bound)."""
        if self.repairing:
            self.pending.append(d)
            return HELD
        return self._in_order(d)

    def repair_again(self, result: RepairResult) -> bool:
        """After `end_repair` and `take_held`: True when another repair must start now, because a
        resync was asked for meanwhile or held deliveries were dropped (not after a failure)."""
        if (self.resync_asked or self.overflowed) and not self.repairing and result != RepairResult.FAILED:
            self.resync_asked = self.overflowed = False
            self.repairing = True
            return True
        return False


def _offset_of(d: Delivery) -> int:
    return d.offset


class Repair:
    """One read of missing events from history: after the held deliveries, up to the offset
    before the first of them; with nothing held (a resync), up to the newest offset the first
    page reports. Usage: `while (since := repair.next_read()) is not None: deliver(repair.take(
    await read(since)))`; then `result` says how it ended."""

    __slots__ = ("_sync", "result", "target")

    def __init__(self, sync: ChannelSync) -> None:
        self._sync = sync
        self.target: int | None = min(d.offset for d in sync.pending) - 1 if sync.pending else None
        self.result: RepairResult | None = None

    def next_read(self) -> StreamPosition | None:
        """Where to read from next (after this offset, in this epoch); None when done."""
        if self.result is not None:
            return None
        if self.target is not None and self._sync.offset >= self.target:
            self.result = RepairResult.OK
            return None
        return self._sync.position

    def take(self, page: HistoryPage) -> list[Delivery]:
        """The events of a page to deliver, in order; the channel's offset moves past them."""
        sync = self._sync
        if self.target is None and not page.epoch_changed:
            self.target = page.top_offset
            if sync.offset >= self.target:
                self.result = RepairResult.CURRENT
                return []
        if page.epoch_changed or not page.events or self.target is None:
            self.result = RepairResult.INCOMPLETE
            return []
        out = []
        for ev in page.events:
            if sync.offset < ev.offset <= self.target:
                sync.offset = ev.offset
                out.append(Delivery(sync.channel, ev.offset, page.epoch, ev.frame, ev.priority))
        if not page.complete:
            self.result = RepairResult.INCOMPLETE
        return out


# ---- client recovery -----------------------------------------------------------------------


class RecoveryReason(StrEnum):
    """Why a channel was not recovered (besides a history error code)."""

    FORBIDDEN = "forbidden"
    IN_PROGRESS = "in_progress"
    EPOCH_CHANGED = "epoch_changed"
    TRIMMED = "trimmed"


@dataclass(slots=True, frozen=True)
class RecoveryAnswer:
    """What a client is told about one channel it asked to recover. `top` is the channel's
    newest position when history was read."""

    recovered: bool
    reason: str = ""
    top: StreamPosition | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recovered": self.recovered}
        if self.top is not None:
            out["epoch"], out["offset"] = self.top.epoch, self.top.offset
        if self.reason:
            out["reason"] = str(self.reason)
        return out

    @property
    def outcome(self) -> str:
        """The edge_recoveries_total label: "recovered" or the reason."""
        return "recovered" if self.recovered else self.reason


class ClientRecovery:
    """One channel a client recovers from its position `since`.

    The connection subscribes the channel with its live frames held, reads the first page
    after `since` (`first_page`), replays `page` and the pages after it (`next_read`,
    `next_page`), then hands on the live frames held meanwhile.
    """

    __slots__ = ("answer", "channel", "more", "page", "since")

    def __init__(self, channel: str, since: StreamPosition, answer: RecoveryAnswer | None = None) -> None:
        self.channel = channel
        self.since = since
        self.answer = answer  # None until decided
        self.page: list[StoredEvent] = []
        self.more = False

    @property
    def replays(self) -> bool:
        """Whether this recovery was started (refused ones hold nothing and replay nothing)."""
        return self.answer is None or self.answer.reason not in (
            RecoveryReason.FORBIDDEN, RecoveryReason.IN_PROGRESS)

    def failed(self, code: str) -> None:
        """History could not be read: not recovered, the client's position stays in force."""
        self.answer = RecoveryAnswer(False, code)

    def first_page(self, page: HistoryPage) -> bool:
        """Decide from the first page read after `since` (in its epoch). Returns whether the
        client's position still holds; if not (the epoch changed, or history no longer holds
        the range), it means nothing now and the client goes on live."""
        ok = page.complete and not page.epoch_changed
        self.page = list(page.events) if ok else []
        self.more = ok and bool(page.events) and page.events[-1].offset < page.top_offset
        top = StreamPosition(page.top_offset, page.epoch)
        reason = "" if ok else (
            RecoveryReason.EPOCH_CHANGED if page.epoch_changed else RecoveryReason.TRIMMED)
        self.answer = RecoveryAnswer(ok, reason, top)
        return ok

    def next_read(self) -> int | None:
        """The offset to read the next replay page after, once `page` is sent; None when done."""
        return self.page[-1].offset if self.page and self.more else None

    def next_page(self, page: HistoryPage) -> None:
        self.page = list(page.events)
        self.more = bool(self.page) and self.page[-1].offset < page.top_offset
