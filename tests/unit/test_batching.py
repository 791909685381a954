"""Outbox: what a stream sends in one message, when, and in which order."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from services.common.batching import BATCH_MAX_BYTES, BATCH_MAX_ITEMS, Outbox


@dataclass
class Sink:
    """A stream whose socket takes data while `room` is set. `try_write` writes at once when it
    does; `send` waits for room (the writer's path) and then writes."""

    room: bool = True
    fail: BaseException | None = None
    written: list[list[str]] = field(default_factory=list)
    at_once: int = 0  # batches written by try_write
    sent: int = 0  # batches written by send
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def try_write(self, batch: list[str]) -> bool:
        if not self.room:
            return False
        self.written.append(batch)
        self.at_once += 1
        return True

    async def send(self, batch: list[str]) -> None:
        if self.fail is not None:
            raise self.fail
        while not self.room:
            await self.opened.wait()
            self.opened.clear()
        self.written.append(batch)
        self.sent += 1

    def make_room(self) -> None:
        self.room = True
        self.opened.set()

    def items(self) -> list[str]:
        return [item for batch in self.written for item in batch]


def outbox(max_items: int = 100) -> Outbox[str, list[str]]:
    return Outbox(max_items, len, list)


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_what_is_put_in_one_iteration_leaves_as_one_batch_without_the_writer() -> None:
    box, sink = outbox(), Sink()
    writer = asyncio.create_task(box.run(sink))
    await turns()
    for item in "abc":
        assert box.put(item)
    assert sink.written == []  # nothing is written inside put
    await turns(1)
    assert sink.written == [["a", "b", "c"]] and (sink.at_once, sink.sent) == (1, 0)
    box.put("d")
    await turns(1)
    assert sink.written == [["a", "b", "c"], ["d"]] and sink.sent == 0
    box.close()
    await asyncio.wait_for(writer, 1)


async def test_a_full_socket_hands_the_batch_to_the_writer_and_order_holds() -> None:
    box, sink = outbox(), Sink(room=False)
    writer = asyncio.create_task(box.run(sink))
    await turns()
    box.put("a")
    box.put("b")
    await turns()
    assert sink.written == []  # held, waiting for room
    box.put("c")  # queued behind the held batch: not written ahead of it
    await turns()
    assert sink.written == []
    sink.make_room()
    await turns()
    assert sink.items() == ["a", "b", "c"] and sink.at_once == 0
    box.put("d")  # the writer has caught up: the callback writes again
    await turns()
    assert sink.items() == ["a", "b", "c", "d"] and sink.at_once == 1
    box.close()
    await asyncio.wait_for(writer, 1)


async def test_order_holds_whatever_the_socket_does() -> None:
    rng = random.Random(7)
    box, sink = outbox(max_items=10_000), Sink()
    writer = asyncio.create_task(box.run(sink))
    expected = []
    for i in range(2_000):
        item = str(i)
        assert box.put(item)
        expected.append(item)
        if rng.random() < 0.1:
            sink.room = not sink.room
            if sink.room:
                sink.make_room()
            await turns(rng.randint(0, 2))
    sink.make_room()
    box.close()
    await asyncio.wait_for(writer, 5)
    assert sink.items() == expected
    assert sink.at_once and sink.sent  # both paths were taken


async def test_bounded_queue_and_bounded_batches() -> None:
    box = outbox(max_items=BATCH_MAX_ITEMS + 10)
    for _ in range(BATCH_MAX_ITEMS + 10):
        assert box.put("x")
    assert not box.put("x")  # full: refused, nothing queued
    assert len(box) == BATCH_MAX_ITEMS + 10
    assert len(box.take()) == BATCH_MAX_ITEMS and len(box) == 10

    big = "y" * (BATCH_MAX_BYTES // 2)
    box = outbox()
    for _ in range(4):
        box.put(big)
    assert len(box.take()) == 2 and len(box) == 2  # stops once the byte bound is reached


async def test_what_was_queued_before_the_stream_opened_is_sent_first() -> None:
    box, sink = outbox(), Sink()
    box.put("early")
    await turns()  # the flush finds no stream: kept
    writer = asyncio.create_task(box.run(sink))
    await turns()
    box.put("late")
    await turns()
    assert sink.items() == ["early", "late"]
    box.close()
    await asyncio.wait_for(writer, 1)


async def test_close_sends_what_is_queued_then_ends_and_refuses_more() -> None:
    box, sink = outbox(), Sink(room=False)
    writer = asyncio.create_task(box.run(sink))
    box.put("a")
    box.put("b")
    box.close()
    assert not box.put("c") and box.closed
    await turns()
    assert not writer.done()  # still sending what was queued
    sink.make_room()
    await asyncio.wait_for(writer, 1)
    assert sink.items() == ["a", "b"]


async def test_a_failed_send_ends_the_writer_with_its_error() -> None:
    box, sink = outbox(), Sink(room=False, fail=ConnectionResetError("gone"))
    writer = asyncio.create_task(box.run(sink))
    box.put("a")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(writer, 1)
    box.put("b")
    await turns()  # no stream any more: nothing is written, nothing raises in the callback
    assert sink.written == []
