"""A connection's bounded send queue with lanes.

Lane 0: control replies and errors (priority 1, no offset) overtake everything.
Lane 1: durable events, strictly FIFO so that each channel's offsets stay in order.
Lane 2: low-priority ephemeral events (typing, progress) go last.
The total is bounded; `push` returns False on overflow and the caller closes the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SendQueue:
    def __init__(self, max_items: int) -> None:
        self._lanes: tuple[deque[str], deque[str], deque[str]] = (deque(), deque(), deque())
        self._max = max_items
        self._size = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def push(self, frame: str, priority: int, durable: bool) -> bool:
        if self._size >= self._max:
            return False
        lane = 1 if durable else (0 if priority <= 1 else 2)
        self._lanes[lane].append(frame)
        self._size += 1
        self._ready.set()
        return True

    async def pop(self) -> str:
        while self._size == 0:
            self._ready.clear()
            await self._ready.wait()
        self._size -= 1
        for lane in self._lanes:
            if lane:
                return lane.popleft()
        raise AssertionError("size and lanes disagree")
