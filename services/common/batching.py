"""Batching of stream messages: what a queue holds when its writer wakes up leaves as one message.

A writer waits for the first item, then takes whatever else is already queued, up to a count and
a byte bound (gRPC's default 4 MiB message limit stays far away). Producers queue during one
event-loop iteration and the writer runs on the next, so batching adds no wait of its own: under
light load a batch is one item, under heavy load it is many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

BATCH_MAX_ITEMS = 512
BATCH_MAX_BYTES = 1 << 20


def take_batch(queue: asyncio.Queue[T | None], first: T, size_of: Callable[[T], int]) -> tuple[list[T], bool]:
    """`first` and what follows it in the queue, within the bounds. The second value is True
    when the queue's close marker (None) was reached: the writer sends the batch, then stops."""
    items = [first]
    size = size_of(first)
    while len(items) < BATCH_MAX_ITEMS and size < BATCH_MAX_BYTES:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return items, False
        if item is None:
            return items, True
        items.append(item)
        size += size_of(item)
    return items, False
