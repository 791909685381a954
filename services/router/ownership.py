"""Ownership rules: which channels this router owns, and which edges receive each channel.

The owner of a channel is the rendezvous-hash winner over the live routers. Edges attach
their channels to the owner they compute; the owner also keeps the channel -> edges set in
the store, so that a router that takes a channel over delivers to the edges that attached to
the previous owner until they re-attach (at most one membership poll later).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from services.common.sharding import OwnerCache
from services.common.store.base import StoreError
from services.common.tasks import cancel_and_wait, raise_if_cancel_lost
from services.router.links import EdgeLink
from services.router.store.base import OwnershipStore

log = structlog.get_logger("switchboard.router")
SAVE_RETRY_S = 0.5
SAVE_EVERY_S = 0.05  # at most one write of the stored edge sets per this interval
CLOSE_SAVE_S = 1.0
UNSAVED_MAX = 100_000  # (channel, edge) changes kept for the store while it is away


class Ownership:
    def __init__(self, node_id: str, store: OwnershipStore, *, refresh_s: float) -> None:
        self.node_id = node_id
        self.routers: frozenset[str] = frozenset({node_id})
        self._members: set[str] = {node_id}
        self.draining = False
        self.links: dict[str, EdgeLink] = {}
        self.subs: dict[str, set[str]] = {}           # channel -> edges attached here
        self._stored: dict[str, tuple[float, set[str]]] = {}  # channel -> (loaded at, edges)
        self._owners = OwnerCache()  # channel -> owner in the current router set
        self._store = store
        self._refresh_s = refresh_s
        self._loading: dict[str, asyncio.Future[set[str] | None]] = {}  # channel -> its pending load
        self._batch: list[str] = []  # channels to load in the next store round trip
        self._unsaved: dict[tuple[str, str], bool] = {}  # (channel, edge) -> attached, not yet stored
        self._unsaved_wake = asyncio.Event()
        self._saver: asyncio.Task[None] | None = None

    def set_routers(self, routers: set[str]) -> None:
        self._members = set(routers)
        self.routers = frozenset(routers - {self.node_id} if self.draining and len(routers - {self.node_id})
                                 else routers | {self.node_id})
        self._stored.clear()  # ownership may have moved: reload the stored edge sets lazily
        self._owners.reset()

    def drain(self) -> None:
        """Stop owning channels: publishes reaching us from now on go to the remaining routers."""
        self.draining = True
        self.set_routers(self._members)

    def owner(self, channel: str) -> str:
        """The channel's owner in the current router set (hashed once per channel and set)."""
        return self._owners.owner(channel, self.routers) or self.node_id

    def owns(self, channel: str) -> bool:
        return self.owner(channel) == self.node_id

    def attach(self, link: EdgeLink, channels: list[str]) -> None:
        """The edge receives these channels from now on (answer `attached` at once). The stored
        edge sets, which only a router taking a channel over reads, follow in the background."""
        for channel in channels:
            self.subs.setdefault(channel, set()).add(link.edge_id)
            link.channels.add(channel)
            cached = self._stored.get(channel)
            if cached is not None:
                cached[1].add(link.edge_id)
        self._persist(link.edge_id, channels, True)

    def detach(self, link: EdgeLink, channels: list[str]) -> None:
        for channel in channels:
            self._drop(channel, link.edge_id)
            link.channels.discard(channel)
        self._persist(link.edge_id, channels, False)

    # ---- the stored edge sets ----------------------------------------------------------------

    def _persist(self, edge_id: str, channels: list[str], attached: bool) -> None:
        for channel in channels:  # the latest state of a (channel, edge) wins
            self._unsaved[(channel, edge_id)] = attached
        self._unsaved_wake.set()

    async def start(self) -> None:
        self._saver = asyncio.create_task(self._save_loop(), name="ownership-saver")

    async def aclose(self) -> None:
        """Stop the saver, then save what is left (bounded: edges re-attach anyway)."""
        await cancel_and_wait(self._saver)
        self._saver = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_SAVE_S):
                await self._save()

    async def _save_loop(self) -> None:
        """Write attaches and detaches to the store, all that accumulated in one go per edge and
        kind. An attach is answered before its write: were it held for the store round trip,
        a connection storm's first attaches would queue behind each other, one round trip each,
        on the edge's stream. A router that takes a channel over before the write lands misses
        the edge only until the edge re-attaches and repairs the gap from history. After a
        write the next waits SAVE_EVERY_S: a storm's attaches share a few writes (a fresh
        router wrote 32 in the first 60 ms of a 2,000-connection storm, one per batch of
        attaches, on the core the storm's clients also need)."""
        while True:
            await self._unsaved_wake.wait()
            self._unsaved_wake.clear()
            if not await self._save():
                raise_if_cancel_lost()  # a cancelled write can come back as a store error
                await asyncio.sleep(SAVE_RETRY_S)  # the store is away: retry, not in a spin
                self._unsaved_wake.set()
            else:
                await asyncio.sleep(SAVE_EVERY_S)  # what comes meanwhile goes in the next write

    async def _save(self) -> bool:
        unsaved, self._unsaved = self._unsaved, {}
        if not unsaved:
            return True
        added: dict[str, list[str]] = {}
        removed: dict[str, list[str]] = {}
        for (channel, edge_id), attached in unsaved.items():
            (added if attached else removed).setdefault(edge_id, []).append(channel)
        try:
            for edge_id, channels in added.items():
                await self._store.add_edge(edge_id, channels)
            for edge_id, channels in removed.items():
                await self._store.remove_edge(edge_id, channels)
        except StoreError as e:
            log.warning("ownership_store_failed", changes=len(unsaved), error=str(e))
            for key, attached in unsaved.items():  # keep what no newer change replaced
                if len(self._unsaved) >= UNSAVED_MAX:  # a long outage: edges re-attach anyway,
                    break                              # and stored sets expire ttl_s after their last add
                self._unsaved.setdefault(key, attached)
            return False
        return True

    def drop_link(self, link: EdgeLink) -> None:
        if self.links.get(link.edge_id) is link:
            del self.links[link.edge_id]
        for channel in link.channels:
            self._drop(channel, link.edge_id)

    def _drop(self, channel: str, edge_id: str) -> None:
        edges = self.subs.get(channel)
        if edges is not None:
            edges.discard(edge_id)
            if not edges:
                del self.subs[channel]
        cached = self._stored.get(channel)
        if cached is not None:
            cached[1].discard(edge_id)

    def targets_now(self, channel: str) -> list[EdgeLink] | None:
        """`targets` when it needs no store read (the stored set is cached and fresh), else None."""
        cached = self._stored.get(channel)
        if cached is None or time.monotonic() - cached[0] > self._refresh_s:
            return None
        return self._links_of(channel, cached[1])

    async def targets(self, channel: str) -> list[EdgeLink]:
        """Connected edges that receive the channel: attached here, or attached to a previous
        owner (from the store, re-read at most every refresh_s, never per message)."""
        links = self.targets_now(channel)
        if links is not None:
            return links
        cached = self._stored.get(channel)
        stored = await self._load(channel)
        if stored is None:
            stored = cached[1] if cached else set()
        if len(self._stored) > 100_000:  # bound the cache; it only saves store reads
            self._stored.clear()
        self._stored[channel] = (time.monotonic(), stored)
        return self._links_of(channel, stored)

    def _links_of(self, channel: str, stored: set[str]) -> list[EdgeLink]:
        attached = self.subs.get(channel)
        edges = stored | attached if attached else stored
        return [link for e in edges if (link := self.links.get(e)) is not None and not link.broken]

    async def _load(self, channel: str) -> set[str] | None:
        """The channel's stored edge set; None if the store failed. Loads asked for in one loop
        iteration share one store round trip, and concurrent loads of a channel share one read
        (a storm's first publishes would otherwise open a pooled connection each)."""
        fut = self._loading.get(channel)
        if fut is None:
            fut = self._loading[channel] = asyncio.get_running_loop().create_future()
            self._batch.append(channel)
            if len(self._batch) == 1:
                await self._load_batch()
        return await asyncio.shield(fut)

    async def _load_batch(self) -> None:
        batch: list[str] = []
        loaded: list[set[str]] | None = None
        try:
            await asyncio.sleep(0)  # let the other loads of this iteration join
            batch, self._batch = self._batch, []
            loaded = await self._store.edges_of_many(batch)
        except StoreError as e:
            log.warning("ownership_load_failed", channels=len(batch), error=str(e))
        finally:
            if not batch:  # cancelled before taking the batch: take it, so no load waits forever
                batch, self._batch = self._batch, []
            for i, c in enumerate(batch):
                fut = self._loading.pop(c, None)
                if fut is not None and not fut.done():
                    fut.set_result(loaded[i] if loaded is not None else None)
