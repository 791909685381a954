"""take_batch: what a writer sends in one stream message."""

from __future__ import annotations

import asyncio

from services.common.batching import BATCH_MAX_BYTES, BATCH_MAX_ITEMS, take_batch


def queue_of(*items: bytes | None) -> asyncio.Queue[bytes | None]:
    q: asyncio.Queue[bytes | None] = asyncio.Queue()
    for item in items:
        q.put_nowait(item)
    return q


def test_takes_what_is_queued_in_order() -> None:
    q = queue_of(b"b", b"c")
    assert take_batch(q, b"a", len) == ([b"a", b"b", b"c"], False)
    assert q.empty()


def test_stops_at_the_close_marker_and_says_so() -> None:
    q = queue_of(b"b", None, b"after")
    assert take_batch(q, b"a", len) == ([b"a", b"b"], True)
    assert q.get_nowait() == b"after"


def test_bounded_by_count_and_by_bytes() -> None:
    q = queue_of(*[b"x"] * (BATCH_MAX_ITEMS + 10))
    batch, _ = take_batch(q, b"x", len)
    assert len(batch) == BATCH_MAX_ITEMS and q.qsize() == 11

    big = b"y" * (BATCH_MAX_BYTES // 2)
    q = queue_of(big, big, big)
    batch, _ = take_batch(q, big, len)
    assert len(batch) == 2 and q.qsize() == 2  # stops once the bound is reached
