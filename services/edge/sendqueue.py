"""A connection's bounded send queue with lanes.

Lane 0: control replies and errors (priority 1, no offset) overtake everything.
Lane 1: durable events, strictly FIFO so that each channel's offsets stay in order.
Lane 2: ephemeral events of lower priority (typing, progress) go last and are shed first.

The total is bounded. When it is full, the oldest lane-2 frame is dropped to make room (an
ephemeral event has no offset and no recovery, so dropping it loses nothing a client can ask
for again); only when control and durable frames fill the queue does `push` return False, and
the caller closes the connection with 4008 (the client reconnects and recovers from history).

Each frame carries the time its publish was accepted (unix seconds, 0 when unknown: replies,
replays), so that the writer can observe the delivery latency; `pop` returns the lane too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

F = TypeVar("F")  # a frame: prepared WebSocket frame bytes at the edge, anything in tests


def lane_of(priority: int, offset: int) -> int:
    """A frame's lane: 1 when it is durable (has an offset), 0 for control (priority <= 1),
    2 for the rest."""
    return 1 if offset else (0 if priority <= 1 else 2)


class SendQueue(Generic[F]):
    # Lanes and the room event are made on first use: most connections never queue anything
    # (frames go straight to the socket), and an empty deque or Event costs about 600 bytes.
    __slots__ = ("_half", "_lanes", "_ready", "_room", "max_items", "shed", "size")

    def __init__(self, max_items: int) -> None:
        self._lanes: list[deque[tuple[F, float]] | None] = [None, None, None]
        self.max_items = max_items
        self._half = max(1, max_items // 2)
        self.size = 0
        self._ready: asyncio.Event | None = None
        self._room: asyncio.Event | None = None  # exists only while someone waits for room
        self.shed = 0  # lane-2 frames dropped to make room

    def __len__(self) -> int:
        return self.size  # frames queued (read `size` on hot paths: no call)

    def push(self, frame: F, priority: int, durable: bool, accepted: float = 0.0) -> bool:
        lane = lane_of(priority, durable)
        if self.size >= self.max_items:
            shed = self._lanes[2]
            if not shed:
                if lane == 2:  # a full queue of what matters: this typing indicator goes
                    self.shed += 1
                    return True
                return False
            shed.popleft()
            self.size -= 1
            self.shed += 1
        queue = self._lanes[lane]
        if queue is None:
            queue = self._lanes[lane] = deque()
        queue.append((frame, accepted))
        self.size += 1
        if self._ready is not None:
            self._ready.set()
        if self.size >= self._half and self._room is not None:
            self._room.clear()
        return True

    async def wait_ready(self) -> None:
        """Wait until something is queued."""
        while self.size == 0:
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            await self._ready.wait()

    def pop_many(self, limit: int) -> list[tuple[F, int, float]]:
        """Up to `limit` frames in send order (lane 0 first): (frame, lane, accepted)."""
        out: list[tuple[F, int, float]] = []
        for i, lane in enumerate(self._lanes):
            while lane and len(out) < limit:
                frame, accepted = lane.popleft()
                out.append((frame, i, accepted))
        self.size -= len(out)
        if self.size < self._half and self._room is not None:
            self._room.set()
        return out

    async def pop(self) -> tuple[F, int, float]:
        """The next frame, its lane (0 control, 1 durable, 2 ephemeral) and its accepted time."""
        await self.wait_ready()
        return self.pop_many(1)[0]

    async def wait_room(self) -> None:
        """Wait until the queue is less than half full (paced producers such as a replay)."""
        while self.size >= self._half:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
