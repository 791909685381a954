"""The edge's catch-up decisions alone: ordering, gap repair, resync and client recovery.

`catchup.py` does no I/O, so these tests drive it as the hub and a connection do, with pages
from `FakeHistory` (a small in-memory history that answers reads as the history tier does:
the events after an offset, `complete` false when the oldest held event is past it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.edge.catchup import (
    DELIVER,
    DUPLICATE,
    EPOCH_CHANGED,
    GAP,
    HELD,
    OVERFLOWED,
    ChannelSync,
    ClientRecovery,
    RecoveryAnswer,
    RecoveryReason,
    Repair,
    RepairResult,
    StreamPosition,
    Verdict,
)
from services.edge.domain import Delivery, HistoryPage, StoredEvent

CHANNEL = "session:s1"
EPOCH = "e1"


def d(offset: int, epoch: str = EPOCH) -> Delivery:
    return Delivery(CHANNEL, offset, epoch, f"live-{epoch}-{offset}".encode(), 2, 1.5)


@dataclass
class FakeHistory:
    """A channel's history: offsets first..top of one epoch; pages of at most `limit`."""

    top: int
    first: int = 1
    epoch: str = EPOCH
    limit: int = 500
    reads: list[StreamPosition] = field(default_factory=list)

    def read(self, since: StreamPosition, limit: int = 500) -> HistoryPage:
        self.reads.append(since)
        if since.epoch and since.epoch != self.epoch:
            return HistoryPage(self.epoch, self.top, self.first, epoch_changed=True, complete=False)
        start = max(since.offset + 1, self.first)
        offsets = range(start, min(self.top, start + min(limit, self.limit) - 1) + 1)
        events = [StoredEvent(o, f"stored-{self.epoch}-{o}".encode(), 2) for o in offsets]
        return HistoryPage(self.epoch, self.top, self.first, complete=since.offset + 1 >= self.first,
                           events=events)


def run_repair(sync: ChannelSync, history: FakeHistory) -> tuple[list[int], RepairResult]:
    """Drive one repair as the hub does; returns the offsets it delivers and how it ended."""
    return run_repair_from(sync.start_repair(), history)


def run_repair_from(repair: Repair, history: FakeHistory) -> tuple[list[int], RepairResult]:
    out: list[int] = []
    while (since := repair.next_read()) is not None:
        out.extend(x.offset for x in repair.take(history.read(since)))
    assert repair.result is not None
    return out, repair.result


def after_repair(sync: ChannelSync, result: RepairResult) -> list[tuple[int, Verdict]]:
    """Hand on the held deliveries as the hub does: (offset, verdict) of each, in order."""
    return [(x.offset, sync.take_held(x)) for x in sync.end_repair(result)]


def receive_all(sync: ChannelSync, *offsets: int) -> list[Verdict]:
    return [sync.receive(d(o)) for o in offsets]


# ---- ordering --------------------------------------------------------------------------------


def test_in_order_deliveries_pass_and_duplicates_are_dropped() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    assert sync.position == StreamPosition(0, "")
    assert receive_all(sync, 1, 2, 3, 2, 1, 3, 4) == [
        DELIVER, DELIVER, DELIVER, DUPLICATE, DUPLICATE, DUPLICATE, DELIVER]
    assert sync.position == StreamPosition(4, EPOCH)
    assert not sync.repairing and sync.pending == []


def test_first_delivery_sets_the_starting_point() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    assert receive_all(sync, 40, 41, 39) == [DELIVER, DELIVER, DUPLICATE]
    assert sync.position == StreamPosition(41, EPOCH)


def test_ephemeral_deliveries_always_pass_and_move_nothing() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    assert receive_all(sync, 0, 1, 0, 3) == [DELIVER, DELIVER, DELIVER, GAP]
    assert receive_all(sync, 0) == [DELIVER]  # not held during the repair either
    assert [x.offset for x in sync.pending] == [3]
    assert sync.position == StreamPosition(1, EPOCH)


def test_epoch_change_restarts_the_stream_from_the_new_epoch() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 3)
    assert sync.receive(d(1, "e2")) is EPOCH_CHANGED
    assert sync.previous_epoch == EPOCH
    assert sync.position == StreamPosition(1, "e2")
    assert [sync.receive(d(o, "e2")) for o in (2, 1)] == [DELIVER, DUPLICATE]
    # A late delivery of the old epoch is a change again (the hub cannot tell which is newer).
    assert sync.receive(d(9, EPOCH)) is EPOCH_CHANGED
    assert sync.previous_epoch == "e2"


# ---- gap repair ------------------------------------------------------------------------------


def test_gap_is_held_then_repaired_up_to_the_held_delivery() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    assert receive_all(sync, 1, 2, 5) == [DELIVER, DELIVER, GAP]
    assert sync.repairing
    history = FakeHistory(top=5)
    delivered, result = run_repair(sync, history)
    assert (delivered, result) == ([3, 4], RepairResult.OK)
    assert history.reads == [StreamPosition(2, EPOCH)]
    assert after_repair(sync, result) == [(5, DELIVER)]
    assert sync.position == StreamPosition(5, EPOCH)
    assert not sync.repairing and not sync.repair_again(result)


def test_repaired_deliveries_are_the_stored_frames_in_the_page_epoch() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 3)
    repair = sync.start_repair()
    since = repair.next_read()
    assert since == StreamPosition(1, EPOCH)
    got = repair.take(FakeHistory(top=3).read(since))
    assert got == [Delivery(CHANNEL, 2, EPOCH, b"stored-e1-2", 2, 0.0)]


def test_deliveries_during_a_repair_are_held_and_handed_on_in_offset_order() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 5)
    repair = sync.start_repair()  # the repair's reads begin: its target is 4
    assert repair.target == 4
    assert receive_all(sync, 6, 4, 7, 2, 5) == [HELD] * 5
    while (since := repair.next_read()) is not None:
        repair.take(FakeHistory(top=7).read(since))
    assert repair.result is RepairResult.OK
    assert after_repair(sync, RepairResult.OK) == [
        (2, DUPLICATE), (4, DUPLICATE), (5, DELIVER), (5, DUPLICATE), (6, DELIVER), (7, DELIVER)]
    assert sync.position == StreamPosition(7, EPOCH)


def test_the_target_counts_what_was_held_before_the_reads_began() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 6)
    assert receive_all(sync, 3) == [HELD]  # same loop iteration: the repair has not begun
    delivered, result = run_repair(sync, FakeHistory(top=6))
    assert (delivered, result) == ([2], RepairResult.OK)
    assert after_repair(sync, result) == [(3, DELIVER), (6, GAP)]
    assert sync.repairing  # a second repair for 4..5
    delivered, result = run_repair(sync, FakeHistory(top=6))
    assert (delivered, result) == ([4, 5], RepairResult.OK)
    assert after_repair(sync, result) == [(6, DELIVER)]


def test_a_new_gap_among_held_deliveries_holds_the_rest_for_the_next_repair() -> None:
    sync = ChannelSync(CHANNEL, pending_max=3)
    receive_all(sync, 1, 3)
    assert receive_all(sync, 4, 9) == [HELD, HELD]
    delivered, result = run_repair(sync, FakeHistory(top=9))
    assert delivered == [2]
    assert after_repair(sync, result) == [(3, DELIVER), (4, DELIVER), (9, GAP)]
    assert [x.offset for x in sync.pending] == [9]
    delivered, result = run_repair(sync, FakeHistory(top=9))
    assert (delivered, result) == ([5, 6, 7, 8], RepairResult.OK)


def test_a_late_duplicate_held_before_the_reads_begin_defers_the_repair() -> None:
    # The target is the offset before the first held delivery: here it is already delivered,
    # so this repair reads nothing, and the gap is repaired by the next one.
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 5)
    assert receive_all(sync, 2) == [HELD]
    history = FakeHistory(top=5)
    assert run_repair(sync, history) == ([], RepairResult.OK)
    assert history.reads == []
    assert after_repair(sync, RepairResult.OK) == [(2, DUPLICATE), (5, GAP)]
    assert run_repair(sync, history) == ([3, 4], RepairResult.OK)
    assert after_repair(sync, RepairResult.OK) == [(5, DELIVER)]


def test_a_long_gap_is_read_page_by_page() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 250)
    history = FakeHistory(top=250, limit=100)
    delivered, result = run_repair(sync, history)
    assert (delivered, result) == (list(range(2, 250)), RepairResult.OK)
    assert [p.offset for p in history.reads] == [1, 101, 201]


def test_overflow_during_a_repair_drops_and_reads_the_dropped_later() -> None:
    sync = ChannelSync(CHANNEL, pending_max=2)
    receive_all(sync, 1, 3)  # the delivery after the gap counts in the bound
    assert receive_all(sync, 4, 5, 6, 7) == [HELD, OVERFLOWED, OVERFLOWED, OVERFLOWED]
    assert sync.overflowed
    delivered, result = run_repair(sync, FakeHistory(top=7))
    assert delivered == [2]
    assert after_repair(sync, result) == [(3, DELIVER), (4, DELIVER)]
    assert sync.repair_again(result)  # 5..7 were dropped: read up to the newest offset
    assert sync.repairing and not sync.overflowed
    delivered, result = run_repair(sync, FakeHistory(top=7))
    assert (delivered, result) == ([5, 6, 7], RepairResult.OK)
    assert after_repair(sync, result) == []
    assert not sync.repair_again(result)


def test_a_range_history_no_longer_holds_is_reported_and_the_stream_goes_on() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 8)
    repair = sync.start_repair()
    assert receive_all(sync, 9, 1) == [HELD, HELD]
    delivered, result = run_repair_from(repair, FakeHistory(top=9, first=6))  # 2..5 trimmed
    assert (delivered, result) == ([6, 7], RepairResult.INCOMPLETE)
    assert after_repair(sync, result) == [(1, DUPLICATE), (8, DELIVER), (9, DELIVER)]


def test_an_empty_incomplete_page_goes_on_from_the_first_held_delivery() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 8)
    repair = sync.start_repair()
    assert receive_all(sync, 2, 10) == [HELD, HELD]
    delivered, result = run_repair_from(repair, FakeHistory(top=1))  # nothing after 2
    assert (delivered, result) == ([], RepairResult.INCOMPLETE)
    # The gap (3..7) is skipped, not waited for; 2 is a late duplicate and 9 never came.
    assert after_repair(sync, result) == [(2, DUPLICATE), (8, DELIVER), (10, GAP)]


def test_a_repair_in_an_epoch_history_lost_gives_up_without_delivering() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 5)
    repair = sync.start_repair()
    assert receive_all(sync, 6, 2) == [HELD, HELD]
    delivered, result = run_repair_from(repair, FakeHistory(top=9, epoch="e2"))
    assert (delivered, result) == ([], RepairResult.INCOMPLETE)
    assert after_repair(sync, result) == [(2, DUPLICATE), (5, DELIVER), (6, DELIVER)]


def test_a_failed_repair_goes_on_from_the_held_deliveries_and_not_again() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 5)
    assert sync.start_repair().next_read() == StreamPosition(2, EPOCH)  # the read then fails
    assert sync.resync() is False  # asked meanwhile
    assert receive_all(sync, 6, 2) == [HELD, HELD]
    assert after_repair(sync, RepairResult.FAILED) == [(2, DUPLICATE), (5, DELIVER), (6, DELIVER)]
    assert not sync.repair_again(RepairResult.FAILED)
    assert not sync.repairing


# ---- resync ----------------------------------------------------------------------------------


def test_resync_reads_up_to_the_newest_offset() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2)
    assert sync.resync() is True and sync.repairing
    repair = sync.start_repair()
    assert repair.target is None
    history = FakeHistory(top=5)
    delivered, result = run_repair_from(repair, history)
    assert (delivered, result) == ([3, 4, 5], RepairResult.OK)
    assert repair.target == 5
    assert after_repair(sync, result) == []
    assert sync.receive(d(6)) is DELIVER


def test_resync_when_current_reads_once_and_delivers_nothing() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2)
    assert sync.resync()
    history = FakeHistory(top=2)
    assert run_repair(sync, history) == ([], RepairResult.CURRENT)
    assert history.reads == [StreamPosition(2, EPOCH)]


def test_resync_of_a_channel_that_saw_nothing_does_nothing() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    assert sync.resync() is False
    assert not sync.repairing and not sync.resync_asked


def test_resync_asked_during_a_repair_catches_up_after_it() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 4)
    assert sync.resync() is False and sync.resync_asked
    history = FakeHistory(top=6)
    delivered, result = run_repair(sync, history)
    assert (delivered, result) == ([2, 3], RepairResult.OK)  # stops at its target
    assert after_repair(sync, result) == [(4, DELIVER)]
    assert sync.repair_again(result) and not sync.resync_asked
    assert run_repair(sync, history) == ([5, 6], RepairResult.OK)


# ---- client recovery -------------------------------------------------------------------------


def test_recovery_within_history_replays_every_page() -> None:
    r = ClientRecovery(CHANNEL, StreamPosition(3, EPOCH))
    history = FakeHistory(top=8, limit=2)
    assert r.first_page(history.read(r.since)) is True
    assert r.answer is not None
    assert r.answer.to_wire() == {"recovered": True, "epoch": EPOCH, "offset": 8}
    assert r.answer.outcome == "recovered" and r.replays
    replayed: list[int] = []
    while r.page:
        replayed.extend(ev.offset for ev in r.page)
        since = r.next_read()
        if since is None:
            break
        r.next_page(history.read(StreamPosition(since, "")))
    assert replayed == [4, 5, 6, 7, 8]
    assert [p.offset for p in history.reads] == [3, 5, 7]


def test_recovery_of_a_current_client_replays_nothing() -> None:
    r = ClientRecovery(CHANNEL, StreamPosition(8, EPOCH))
    assert r.first_page(FakeHistory(top=8).read(r.since)) is True
    assert (r.page, r.more, r.next_read()) == ([], False, None)


def test_recovery_after_history_was_trimmed_is_refused() -> None:
    r = ClientRecovery(CHANNEL, StreamPosition(2, EPOCH))
    assert r.first_page(FakeHistory(top=9, first=5).read(r.since)) is False
    assert r.answer is not None
    assert r.answer.to_wire() == {"recovered": False, "epoch": EPOCH, "offset": 9, "reason": "trimmed"}
    assert r.answer.outcome == "trimmed"
    assert (r.page, r.more) == ([], False)
    assert r.replays  # it still hands on the live frames held meanwhile


def test_recovery_in_another_epoch_is_refused() -> None:
    r = ClientRecovery(CHANNEL, StreamPosition(2, "old"))
    assert r.first_page(FakeHistory(top=4).read(r.since)) is False
    assert r.answer is not None
    assert r.answer.to_wire() == {"recovered": False, "epoch": EPOCH, "offset": 4,
                                  "reason": "epoch_changed"}


def test_recovery_when_history_fails_names_the_error() -> None:
    r = ClientRecovery(CHANNEL, StreamPosition(2, EPOCH))
    r.failed("unavailable")
    assert r.answer is not None
    assert r.answer.to_wire() == {"recovered": False, "reason": "unavailable"}
    assert r.answer.outcome == "unavailable" and r.replays


def test_refused_recoveries_name_the_reason_and_replay_nothing() -> None:
    for reason in (RecoveryReason.FORBIDDEN, RecoveryReason.IN_PROGRESS):
        r = ClientRecovery(CHANNEL, StreamPosition(2, EPOCH), RecoveryAnswer(False, reason))
        assert r.answer is not None
        assert r.answer.to_wire() == {"recovered": False, "reason": str(reason)}
        assert not r.replays
    assert ClientRecovery(CHANNEL, StreamPosition(2, EPOCH)).replays  # not decided yet


def test_resync_after_the_channel_restarted_under_a_new_epoch_is_incomplete() -> None:
    sync = ChannelSync(CHANNEL, pending_max=10)
    receive_all(sync, 1, 2, 3)
    assert sync.resync()
    history = FakeHistory(top=1, epoch="e2")  # behind our offset, but another epoch
    assert run_repair(sync, history) == ([], RepairResult.INCOMPLETE)
    assert history.reads == [StreamPosition(3, EPOCH)]
    assert after_repair(sync, RepairResult.INCOMPLETE) == []
    assert sync.receive(d(1, "e2")) is EPOCH_CHANGED  # the live stream of the new epoch takes over
