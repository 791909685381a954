"""Task helpers (services/common/tasks.py)."""

from __future__ import annotations

import asyncio

from services.common.tasks import cancel_and_wait, raise_if_cancel_lost


async def test_cancel_and_wait_ends_the_task_and_returns() -> None:
    cleaned = asyncio.Event()

    async def worker() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()


async def test_a_caller_cancelled_while_it_waits_stays_cancelled() -> None:
    # The worker's cleanup takes a while; the caller is cancelled meanwhile (an owner closing it).
    async def slow_to_finish() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)

    went_on = False

    async def caller() -> None:
        nonlocal went_on
        worker = asyncio.create_task(slow_to_finish())
        await asyncio.sleep(0)
        await cancel_and_wait(worker)
        went_on = True  # a swallowed cancellation would carry on here

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)  # the caller now waits for the worker's cleanup
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not went_on


async def test_a_caller_already_cancelled_still_waits_for_the_task() -> None:
    # cancel_and_wait in a `finally` of a cancelled task: the task is still awaited to its end.
    cleaned = asyncio.Event()

    async def slow_to_finish() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.02)
            cleaned.set()

    async def caller() -> None:
        worker = asyncio.create_task(slow_to_finish())
        try:
            await asyncio.sleep(10)
        finally:
            await cancel_and_wait(worker)

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and cleaned.is_set()


async def test_a_cancellation_a_callee_turned_into_an_error_still_ends_the_loop() -> None:
    """The pattern of a retrying loop: a failed call is logged and tried again. A callee that
    ends a cancelled call with an error of its own (redis-py can) must not keep it going."""
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server") from None

    async def loop() -> None:
        while True:
            try:
                await call()
            except ConnectionError:
                raise_if_cancel_lost()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled() and calls == 1


async def test_raise_if_cancel_lost_does_nothing_in_a_task_not_cancelled() -> None:
    raise_if_cancel_lost()  # no exception
