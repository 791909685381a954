"""A connection's bounded send queue: lanes, the bound, shedding and pacing."""

from __future__ import annotations

import asyncio

import pytest

from services.edge.sendqueue import SendQueue


def control(q: SendQueue, frame: str) -> bool:
    return q.push(frame, 1, durable=False)


def durable(q: SendQueue, frame: str, priority: int = 2) -> bool:
    return q.push(frame, priority, durable=True)


def ephemeral(q: SendQueue, frame: str, priority: int = 3) -> bool:
    return q.push(frame, priority, durable=False)


async def drain(q: SendQueue) -> list[str]:
    out = []
    while len(q):
        out.append((await q.pop())[0])
    return out


# ---- lanes -----------------------------------------------------------------------------------


async def test_control_frames_overtake_durable_and_ephemeral_go_last() -> None:
    q = SendQueue(100)
    ephemeral(q, "typing-1")
    durable(q, "d1")
    durable(q, "d2")
    control(q, "c1")
    ephemeral(q, "typing-2", priority=2)
    durable(q, "d3")
    control(q, "c2")
    assert len(q) == 7
    assert await drain(q) == ["c1", "c2", "d1", "d2", "d3", "typing-1", "typing-2"]


async def test_durable_frames_stay_fifo_whatever_their_priority() -> None:
    # A durable priority-1 event (agent_status_update) must not overtake older durable ones:
    # offsets of a channel leave in order.
    q = SendQueue(100)
    durable(q, "d1", priority=3)
    durable(q, "d2", priority=1)
    durable(q, "d3", priority=2)
    durable(q, "d4", priority=1)
    assert await drain(q) == ["d1", "d2", "d3", "d4"]


async def test_control_frame_pushed_behind_a_backlog_is_next_out() -> None:
    q = SendQueue(100)
    for i in range(10):
        durable(q, f"d{i}")
    assert (await q.pop())[0] == "d0"
    control(q, "error")
    assert (await q.pop())[0] == "error"
    assert (await q.pop())[0] == "d1"


async def test_pop_waits_for_a_push() -> None:
    q = SendQueue(10)
    popper = asyncio.create_task(q.pop())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not popper.done()
    durable(q, "d1")
    assert await asyncio.wait_for(popper, 1.0) == ("d1", 1, 0.0)
    assert len(q) == 0


# ---- the bound and shedding -----------------------------------------------------------------


async def test_full_of_control_and_durable_frames_refuses_them_and_sheds_ephemeral() -> None:
    q = SendQueue(4)
    assert durable(q, "d1")
    assert control(q, "c1")
    assert durable(q, "d2")
    assert durable(q, "d3")
    assert len(q) == 4
    assert not durable(q, "d4")
    assert not control(q, "c2")
    assert ephemeral(q, "typing")  # accepted and dropped: a typing indicator never closes a connection
    assert len(q) == 4
    assert q.shed == 1
    assert await drain(q) == ["c1", "d1", "d2", "d3"]


async def test_full_queue_sheds_the_oldest_ephemeral_frame_to_make_room() -> None:
    q = SendQueue(4)
    assert ephemeral(q, "t1")
    assert durable(q, "d1")
    assert ephemeral(q, "t2")
    assert ephemeral(q, "t3")
    assert durable(q, "d2")  # full: t1 goes
    assert q.shed == 1
    assert control(q, "c1")  # full: t2 goes
    assert q.shed == 2
    assert len(q) == 4
    assert await drain(q) == ["c1", "d1", "d2", "t3"]


async def test_ephemeral_frames_shed_each_other_and_push_keeps_succeeding() -> None:
    q = SendQueue(3)
    for i in range(10):
        assert ephemeral(q, f"t{i}")
    assert len(q) == 3
    assert q.shed == 7
    assert await drain(q) == ["t7", "t8", "t9"]


async def test_refuses_only_once_the_last_ephemeral_frame_is_shed() -> None:
    q = SendQueue(3)
    ephemeral(q, "t1")
    ephemeral(q, "t2")
    durable(q, "d1")
    assert durable(q, "d2")  # sheds t1
    assert durable(q, "d3")  # sheds t2
    assert q.shed == 2
    assert not durable(q, "d4")  # lanes 0/1 fill the queue
    assert q.shed == 2
    assert await drain(q) == ["d1", "d2", "d3"]


async def test_room_again_after_a_pop() -> None:
    q = SendQueue(2)
    durable(q, "d1")
    durable(q, "d2")
    assert not durable(q, "d3")
    assert (await q.pop())[0] == "d1"
    assert durable(q, "d3")
    assert await drain(q) == ["d2", "d3"]


# ---- pacing ----------------------------------------------------------------------------------


async def wait_room_returns_soon(q: SendQueue, tu: float) -> bool:
    try:
        await asyncio.wait_for(q.wait_room(), 0.05 * tu)
    except TimeoutError:
        return False
    return True


async def test_wait_room_returns_at_once_while_less_than_half_full(tu: float) -> None:
    q = SendQueue(10)
    assert await wait_room_returns_soon(q, tu)
    for i in range(4):
        durable(q, f"d{i}")
    assert await wait_room_returns_soon(q, tu)


@pytest.mark.parametrize("ephemeral_fill", [False, True])
async def test_wait_room_blocks_from_half_full_until_a_pop_releases_it(
    tu: float, ephemeral_fill: bool,
) -> None:
    q = SendQueue(10)
    for i in range(5):
        q.push(f"f{i}", 3, durable=not ephemeral_fill)
    waiter = asyncio.create_task(q.wait_room())
    await asyncio.sleep(0.05 * tu)
    assert not waiter.done()
    (await q.pop())[0]  # 4 left: less than half
    await asyncio.wait_for(waiter, 1.0 * tu)


async def test_wait_room_stays_blocked_until_below_half(tu: float) -> None:
    q = SendQueue(10)
    for i in range(8):
        durable(q, f"d{i}")
    waiter = asyncio.create_task(q.wait_room())
    for _ in range(3):  # 7, 6, 5 left: still at least half full
        (await q.pop())[0]
        await asyncio.sleep(0.02 * tu)
        assert not waiter.done()
    (await q.pop())[0]  # 4 left
    await asyncio.wait_for(waiter, 1.0 * tu)
    durable(q, "again")  # back to half full: blocks again
    assert not await wait_room_returns_soon(q, tu)


async def test_shedding_keeps_the_queue_full_and_wait_room_blocked(tu: float) -> None:
    q = SendQueue(4)
    for i in range(6):
        ephemeral(q, f"t{i}")
    assert len(q) == 4
    assert not await wait_room_returns_soon(q, tu)
    (await q.pop())[0]
    (await q.pop())[0]
    assert not await wait_room_returns_soon(q, tu)  # 2 of 4: still half full
    (await q.pop())[0]
    assert await wait_room_returns_soon(q, tu)


async def test_paced_producer_never_fills_the_queue(tu: float) -> None:
    # A replay pushes only after wait_room(); the consumer pops slowly. The queue never holds
    # more than half its bound, and every frame arrives in order.
    q = SendQueue(8)
    frames = [f"d{i}" for i in range(40)]
    peak = 0

    async def produce() -> None:
        nonlocal peak
        for f in frames:
            await q.wait_room()
            assert durable(q, f)
            peak = max(peak, len(q))

    async def consume() -> list[str]:
        got = []
        for _ in frames:
            got.append((await q.pop())[0])
            await asyncio.sleep(0)
        return got

    async with asyncio.timeout(5 * tu):
        _, got = await asyncio.gather(produce(), consume())
    assert got == frames
    assert peak <= 8 // 2


async def test_pop_returns_the_lane_and_the_accepted_time() -> None:
    q = SendQueue(10)
    q.push("typing", 3, durable=False, accepted=12.5)
    q.push("event", 2, durable=True, accepted=10.0)
    q.push("reply", 1, durable=False)
    assert await q.pop() == ("reply", 0, 0.0)
    assert await q.pop() == ("event", 1, 10.0)
    assert await q.pop() == ("typing", 2, 12.5)
