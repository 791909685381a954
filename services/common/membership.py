"""Membership leases: keep our own alive, watch the others'.

Both are owned background tasks: `start()` creates them, `aclose()` cancels them (and the
keeper drops its lease, shielded, under a timeout, once a refresh in flight has been answered,
so a graceful exit is seen at once while a crash is seen when the lease expires).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from services.common.store.base import MembershipStore, StoreBusyError, StoreError
from services.common.tasks import cancel_and_wait, let_finish, raise_if_cancel_lost

log = structlog.get_logger("switchboard.membership")

# A router's edge-link address ("host:port") is leased under this role, beside its gRPC address
# under "router": an edge that does not know the role keeps dialling gRPC, and an edge that sees
# a router without it (an older router) uses the gRPC Connect stream.
LINK_ROLE = "router-link"


class LeaseKeeper:
    def __init__(self, store: MembershipStore, role: str, node_id: str, address: str,
                 *, ttl_s: float, refresh_s: float) -> None:
        self._store, self.role, self.node_id, self.address = store, role, node_id, address
        self._ttl_s, self._refresh_s = ttl_s, refresh_s
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None  # the refresh on its way, if any
        self.healthy = False

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.role}")

    async def _register(self) -> None:
        try:
            async with asyncio.timeout(self._refresh_s * 2):
                await self._store.register(self.role, self.node_id, self.address, self._ttl_s)
            if not self.healthy:
                log.info("lease_acquired", role=self.role, node_id=self.node_id)
            self.healthy = True
        except StoreBusyError:
            log.info("lease_refresh_busy", role=self.role)  # the store is up: health unchanged
        except (StoreError, TimeoutError) as e:
            if self.healthy:
                log.warning("lease_refresh_failed", role=self.role, error=str(e))
            self.healthy = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            # A refresh runs as a task of its own that aclose does not cancel: once sent, the
            # store carries it out even if no one waits for the answer, possibly after a
            # deregister sent meanwhile on another connection, which would bring the lease
            # back until it expires (a stopped router kept its channels that long).
            self._refresh = asyncio.create_task(self._register())
            await asyncio.shield(self._refresh)
            self._refresh = None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        refresh, self._refresh = self._refresh, None
        await let_finish(refresh)  # bounded by its own timeout (two refresh periods)
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._store.deregister(self.role, self.node_id))


class MemberWatcher:
    """Polls the live members of a role; calls `on_change(members)` when the set changes.

    With `also`, a second role is read in the same poll, right after the first, into `also_members`
    (a change there calls `on_change` too). A node leases its `also` record before its own, so a
    member seen in `members` is seen in `also_members` as well if it has such a record."""

    def __init__(self, store: MembershipStore, role: str, *, poll_s: float,
                 on_change: Callable[[dict[str, str]], None] | None = None,
                 also: str | None = None) -> None:
        self._store, self.role, self._poll_s = store, role, poll_s
        self._on_change = on_change
        self._also = also
        self.members: dict[str, str] = {}
        self.also_members: dict[str, str] = {}
        self.healthy = False
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.role}")

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(max(self._poll_s * 4, 2.0)):
                current = await self._store.members(self.role)
                also = await self._store.members(self._also) if self._also else {}
            self.healthy = True
        except StoreBusyError:
            return  # the store is up but this process's pool was full: keep the last view
        except (StoreError, TimeoutError) as e:
            if self.healthy:
                log.warning("membership_poll_failed", role=self.role, error=str(e))
            self.healthy = False
            return  # keep the last known view while the store is away
        if current != self.members or also != self.also_members:
            log.info("members_changed", role=self.role, members=sorted(current))
            self.members, self.also_members = current, also
            self._changed.set()
            self._changed = asyncio.Event()
            if self._on_change is not None:
                self._on_change(dict(current))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self.refresh()
            raise_if_cancel_lost()  # a cancelled poll can come back as a store error

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout_s: float) -> bool:
        async with asyncio.timeout(timeout_s):
            while not predicate(self.members):
                await self._changed.wait()
        return True

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
