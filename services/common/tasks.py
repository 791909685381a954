"""Small task helpers: run sibling coroutines until the first one ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel an owned background task and wait until it has finished. The task's own
    CancelledError ends here; a cancellation of the caller that comes while it waits goes on
    (swallowing it left an edge's router link reconnecting forever when the link was closed
    while its session was winding down). A caller already being cancelled (this in a
    `finally`) still waits for the task."""
    if task is None:
        return
    caller = asyncio.current_task()
    before = caller.cancelling() if caller is not None else 0
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if caller is not None and caller.cancelling() > before:
            raise


async def let_finish(task: asyncio.Task[Any] | None) -> None:
    """Wait for a task without cancelling it: a store write already sent is carried out by the
    store whether or not anyone waits, so what is sent next must wait for it (or it may land
    first). Its outcome is retrieved and dropped: the code that started it reports failures."""
    if task is None:
        return
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


def raise_if_cancel_lost() -> None:
    """Raise CancelledError if the current task was cancelled but the CancelledError never
    reached it. redis-py can end a command cancelled mid-read with its own ConnectionError
    ("Connection closed by server"), which a loop that retries failed calls takes for an outage:
    it would go on forever while its owner waits for it to end. Such loops call this after a
    failed call. Nothing in them uncancels, so a cancellation still counted by
    `Task.cancelling()` is one that was lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def first_completed(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines as tasks; when one ends (or raises), cancel and await the others.
    The first task's exception, if any, is re-raised; cancellation passes through."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
