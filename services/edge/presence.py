"""Presence at the edge: which users this edge has in each session channel, kept in the store.

Connections report joins and leaves synchronously (`add`, `remove`); nothing they do waits on
the store. One owned writer task sends the changed (channel, user) counts in one batched store
call, at most once per `flush_s` (a connection storm's joins of a channel share a write), and
every `ttl/3` renews all of this edge's entries (which also removes the expired
entries of dead edges in those channels). A user's first connection here and last one gone wake
the writer; another connection of a user already present only changes the user's connection
count, which waits for a query answered here or the renewal: a storm of connections to sessions
whose users are already present costs no store write.

Whoever's store call reports a user as joined or left announces it with an ephemeral
`presence_join` / `presence_leave` on the channel, so each change is announced once across the
cluster. Channels with more than `event_max_users` present users get at most one summary of
each kind per `throttle_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from services.common import wire
from services.common.store.base import StoreError
from services.common.tasks import cancel_and_wait, let_finish
from services.edge.domain import Event
from services.edge.store.base import PresenceChange, PresenceStore

log = structlog.get_logger("switchboard.edge")
Publish = Callable[[str, Event], Awaitable[object]]
CLOSE_TIMEOUT_S = 2.0


def tracked(channel: str) -> bool:
    return channel.startswith("session:")


@dataclass
class _Pending:
    """Coalesced changes of one big channel, sent by the summary loop."""

    joined: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)
    count: int = 0


class PresenceTracker:
    def __init__(self, store: PresenceStore, node_id: str, publish: Publish, *, ttl_s: float,
                 events: bool, event_max_users: int, throttle_s: float, timeout_s: float,
                 flush_s: float = 0.0) -> None:
        self._store, self._node_id, self._publish = store, node_id, publish
        self._ttl_s, self._timeout_s, self._flush_s = ttl_s, timeout_s, flush_s
        self._events, self._max_users, self._throttle_s = events, event_max_users, throttle_s
        self.local: dict[str, dict[str, int]] = {}  # channel -> user -> connections here
        self._dirty: dict[str, set[str]] = {}  # users who came or went here: written soon
        self._counts: dict[str, set[str]] = {}  # connection counts of present users: written later
        self._want_counts = False  # a query waits: the next write takes the counts too
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending: dict[str, _Pending] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._writing: asyncio.Task[dict[str, PresenceChange]] | None = None  # a write on its way

    # ---- connections -----------------------------------------------------------------------

    def add(self, channel: str, user_id: str) -> None:
        users = self.local.setdefault(channel, {})
        n = users[user_id] = users.get(user_id, 0) + 1
        self._mark(channel, user_id, wake=n == 1)

    def remove(self, channel: str, user_id: str) -> None:
        users = self.local.get(channel, {})
        if user_id not in users:
            return
        users[user_id] -= 1
        gone = users[user_id] <= 0
        if gone:
            del users[user_id]
            if not users:
                del self.local[channel]
        self._mark(channel, user_id, wake=gone)

    def _mark(self, channel: str, user_id: str, *, wake: bool) -> None:
        """A changed count; `wake`: the user came or went here, so write it soon."""
        self._idle.clear()
        if wake:
            self._dirty.setdefault(channel, set()).add(user_id)
            self._wake.set()
        else:
            self._counts.setdefault(channel, set()).add(user_id)

    # ---- queries ---------------------------------------------------------------------------

    async def users(self, channel: str) -> dict[str, int]:
        """Users present in the channel over every live edge. This edge's own pending changes are
        written first (bounded wait), so a client sees its own join. Raises StoreError."""
        if not self._idle.is_set():
            self._want_counts = True  # connection counts waiting for a write: write them now
            self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self._idle.wait()
        async with asyncio.timeout(self._timeout_s):
            snapshot = await self._store.read(channel)
        if snapshot.left:
            await self._announce(channel, PresenceChange((), snapshot.left, len(snapshot.users)))
        return snapshot.users

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._write_loop(), name="presence-writer"))
        if self._events:
            self._tasks.append(asyncio.create_task(self._summary_loop(), name="presence-summary"))

    async def aclose(self) -> None:
        """Stop the loops, then remove every entry of this edge (bounded) and announce who left."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel_and_wait(task)
        writing, self._writing = self._writing, None
        await let_finish(writing)  # bounded by the write's own timeout (see _flush)
        gone = {c: dict.fromkeys(users, 0) for c, users in self.local.items()}
        for channel, users in self._dirty.items():
            gone.setdefault(channel, {}).update(dict.fromkeys(users, 0))
        self.local.clear()
        self._dirty.clear()
        if not gone:
            return
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                changes = await asyncio.shield(self._store.update(self._node_id, gone, self._ttl_s))
                for channel, change in changes.items():
                    await self._announce(channel, change, summarise=False)

    # ---- writing ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        refresh_s = self._ttl_s / 3
        next_refresh = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_refresh - loop.time(), 0)):
                    await self._wake.wait()
            self._wake.clear()
            full = loop.time() >= next_refresh
            if full:
                next_refresh = loop.time() + refresh_s
            if not await self._flush(full):
                await asyncio.sleep(min(refresh_s, 0.5))  # store away: retry soon, not in a spin
            elif self._flush_s:
                await asyncio.sleep(self._flush_s)  # what changes meanwhile goes in the next write

    async def _flush(self, full: bool) -> bool:
        """Write the changed counts (all of this edge's counts when `full`); False on failure,
        in which case the changes stay marked for the next attempt."""
        dirty, self._dirty = self._dirty, {}
        if full or self._want_counts:
            self._want_counts = False
            for channel, waiting in self._counts.items():
                dirty.setdefault(channel, set()).update(waiting)
            self._counts = {}
        counts = {c: {u: self.local.get(c, {}).get(u, 0) for u in users} for c, users in dirty.items()}
        if full:
            for channel, users in self.local.items():
                counts.setdefault(channel, {}).update(users)
        if not counts:
            if not self._counts:
                self._idle.set()
            return True
        # The write runs as a task of its own that aclose does not cancel: once sent, the store
        # carries it out even if no one waits for the answer, possibly after the removal aclose
        # sends, which would bring this edge's entries back until their leases expire.
        writing = self._writing = asyncio.create_task(self._store.update(self._node_id, counts, self._ttl_s))
        try:
            async with asyncio.timeout(self._timeout_s):
                changes = await asyncio.shield(writing)
        except (StoreError, TimeoutError) as e:
            writing.cancel()  # after a timeout it is given up on: aclose does not wait for it
            log.warning("presence_write_failed", error=str(e), channels=len(counts))
            for channel, marked in dirty.items():
                self._dirty.setdefault(channel, set()).update(marked)
            return False
        if not self._dirty and not self._counts:
            self._idle.set()
        await asyncio.gather(*(self._announce(c, ch) for c, ch in changes.items()))
        return True

    # ---- announcing ------------------------------------------------------------------------

    async def _announce(self, channel: str, change: PresenceChange, *, summarise: bool = True) -> None:
        if not self._events or not (change.joined or change.left):
            return
        pending = self._pending.get(channel)
        if summarise and (pending is not None or change.count > self._max_users):
            self._coalesce(channel, change)
            return
        for user in change.joined:
            await self._send(channel, "presence_join", {"user_id": user, "count": change.count})
        for user in change.left:
            await self._send(channel, "presence_leave", {"user_id": user, "count": change.count})

    def _coalesce(self, channel: str, change: PresenceChange) -> None:
        p = self._pending.setdefault(channel, _Pending())
        for user in change.joined:  # a leave and a join of one user within a window cancel out
            if user in p.left:
                p.left.discard(user)
            else:
                p.joined.add(user)
        for user in change.left:
            if user in p.joined:
                p.joined.discard(user)
            else:
                p.left.add(user)
        p.count = change.count

    async def _summary_loop(self) -> None:
        while True:
            await asyncio.sleep(self._throttle_s)
            pending, self._pending = self._pending, {}
            for channel, p in pending.items():
                if p.joined:
                    await self._send(channel, "presence_join", {"users": sorted(p.joined), "count": p.count})
                if p.left:
                    await self._send(channel, "presence_leave", {"users": sorted(p.left), "count": p.count})

    async def _send(self, channel: str, event_type: str, payload: dict[str, object]) -> None:
        eid = wire.new_id()
        body = wire.encode_body(event_type, payload, event_id=eid, channel=channel,
                                session_id=channel.partition(":")[2])
        event = Event(id=eid, type=event_type, body=body, priority=wire.priority_of(event_type))
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._publish(channel, event)
        except Exception as e:  # an announcement that cannot be delivered is dropped, not retried
            log.warning("presence_event_failed", channel=channel, type=event_type, error=str(e))
