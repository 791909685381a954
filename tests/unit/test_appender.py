"""The router's appender answers every append exactly once, whatever happens to its batch: a
result, a per-append error, a failed or cancelled call, a shutdown. A publisher's pipeline
waits for that answer, so one lost answer would stall a channel for good."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.errors import ErrorCode
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.history_client import HistoryCallError, HistoryInvalidError, HistoryUnavailableError
from services.router.appender import AppendDone, Appender, Outcome


class FakeHistory:
    """Our BatchAppendClient: offsets per channel in memory; a call can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.top: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.fail: HistoryCallError | None = None
        self.invalid: set[str] = set()

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]:
        self.calls.append([c for c, _ in appends])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        out: list[hpb.AppendResponse | HistoryCallError] = []
        for channel, events in appends:
            if channel in self.invalid:
                out.append(HistoryInvalidError("bad channel"))
                continue
            first = self.top.get(channel, 0) + 1
            self.top[channel] = first + len(events) - 1
            out.append(hpb.AppendResponse(epoch="E", results=[
                hpb.Appended(offset=first + i) for i in range(len(events))]))
        return out


def events(*ids: str) -> list[hpb.Event]:
    return [hpb.Event(id=i, body=b"{}") for i in ids]


class Answers:
    def __init__(self) -> None:
        self.got: dict[str, list[Outcome]] = {}

    def to(self, name: str) -> AppendDone:
        def done(outcome: Outcome) -> None:
            self.got.setdefault(name, []).append(outcome)
        return done


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_appends_of_one_iteration_share_a_call_and_each_is_answered_once() -> None:
    history, answers = FakeHistory(), Answers()
    appender = Appender(history, max_events=1_000)
    appender.submit("a", events("a1", "a2"), answers.to("a"))
    appender.submit("b", events("b1"), answers.to("b"))
    assert answers.got == {}  # never answered from inside submit
    await settle()
    assert history.calls == [["a", "b"]]
    [a], [b] = answers.got["a"], answers.got["b"]
    assert isinstance(a, hpb.AppendResponse) and [r.offset for r in a.results] == [1, 2]
    assert isinstance(b, hpb.AppendResponse) and [r.offset for r in b.results] == [1]
    await appender.aclose()


async def test_appends_queued_behind_a_busy_call_leave_together_when_it_returns() -> None:
    history, answers = FakeHistory(), Answers()
    appender = Appender(history, max_events=1_000, max_inflight=1)
    history.gate = asyncio.Event()
    appender.submit("a", events("a1"), answers.to("a1"))
    await settle()
    for i in range(3):
        appender.submit(f"c{i}", events(f"c{i}"), answers.to(f"c{i}"))
    await settle()
    assert history.calls == [["a"]]
    history.gate.set()
    await settle()
    assert history.calls == [["a"], ["c0", "c1", "c2"]]
    assert sorted(answers.got) == ["a1", "c0", "c1", "c2"]
    await appender.aclose()


async def test_an_error_reaches_only_its_append_and_a_raising_callback_harms_no_other() -> None:
    history, answers = FakeHistory(), Answers()
    history.invalid.add("bad")
    appender = Appender(history, max_events=1_000)

    def explode(outcome: Outcome) -> None:
        raise RuntimeError("a caller's bug")

    appender.submit("first", events("f"), explode)
    appender.submit("bad", events("x"), answers.to("bad"))
    appender.submit("good", events("g"), answers.to("good"))
    await settle()
    assert isinstance(answers.got["bad"][0], HistoryInvalidError)
    assert isinstance(answers.got["good"][0], hpb.AppendResponse)
    await appender.aclose()


async def test_a_failed_call_answers_every_append_of_its_batch_with_its_error() -> None:
    history, answers = FakeHistory(), Answers()
    history.fail = HistoryUnavailableError("store away")
    appender = Appender(history, max_events=1_000)
    for name in ("a", "b"):
        appender.submit(name, events(name), answers.to(name))
    await settle()
    assert [type(answers.got[n][0]) for n in ("a", "b")] == [HistoryUnavailableError] * 2
    assert answers.got["a"][0].code == ErrorCode.UNAVAILABLE
    await appender.aclose()


async def test_shutdown_answers_calls_under_way_queued_appends_and_later_submits() -> None:
    history, answers = FakeHistory(), Answers()
    history.gate = asyncio.Event()  # never opened: the call is under way at shutdown
    appender = Appender(history, max_events=1_000, max_inflight=1)
    appender.submit("inflight", events("i"), answers.to("inflight"))
    await settle()
    appender.submit("queued", events("q"), answers.to("queued"))
    await appender.aclose()
    appender.submit("late", events("l"), answers.to("late"))
    await settle()
    assert {n: len(v) for n, v in answers.got.items()} == {"inflight": 1, "queued": 1, "late": 1}
    assert all(isinstance(v[0], HistoryCallError) for v in answers.got.values())
    # Retryable: the edge publishes again, to the channel's next owner.
    assert {v[0].code for v in answers.got.values()} == {ErrorCode.UNAVAILABLE}


async def test_append_awaits_the_answer_and_raises_errors() -> None:
    history = FakeHistory()
    history.invalid.add("bad")
    appender = Appender(history, max_events=1_000)
    ok = await appender.append("a", events("a1"))
    assert [r.offset for r in ok.results] == [1]
    with pytest.raises(HistoryInvalidError):
        await appender.append("bad", events("x"))
    await appender.aclose()
