"""The history process: gRPC server, lease, health; `serve()` builds everything."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from grpc import aio

from services.common.grpc_gen.history.v1 import history_pb2_grpc as pb_grpc
from services.common.grpc_tier import GrpcTier, TierSpec, serving_tier
from services.common.settings import Settings
from services.common.store.base import MembershipStore, StoreError
from services.common.store.factory import build_membership_store, open_backend
from services.common.tasks import cancel_and_wait, raise_if_cancel_lost
from services.common.telemetry import GrpcMetrics, new_registry
from services.history.metrics import HistoryMetrics
from services.history.servicer import HistoryServicer
from services.history.store.factory import build_stream_store, stream_limits

log = structlog.get_logger("switchboard.history")
SERVICE_NAME = "switchboard.history.v1.History"


@dataclass
class RunningHistory:
    server: aio.Server
    port: int


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningHistory]:
    """Serve until the context exits; then NOT_SERVING, drop the lease, stop, close the store."""
    registry = new_registry()
    metrics = HistoryMetrics(registry)
    backend = open_backend(settings)
    try:
        store = build_stream_store(backend, stream_limits(settings))
        members = build_membership_store(backend)

        def add_servicers(server: aio.Server) -> None:
            servicer = HistoryServicer(store, metrics, read_limit=settings.history_read_limit)
            pb_grpc.add_HistoryServicer_to_server(servicer, server)

        spec = TierSpec("history", SERVICE_NAME, add_servicers, stop_grace_s=settings.drain_grace_s)
        async with serving_tier(settings, spec, members=members, registry=registry,
                                grpc_metrics=GrpcMetrics(registry)) as tier:
            # Health follows the store: the lease keeper's refresh is our store probe.
            watch = asyncio.create_task(_follow_store(tier, settings.lease_refresh_s))
            probe = asyncio.create_task(_time_store_health(members, metrics, settings.lease_refresh_s))
            try:
                yield RunningHistory(tier.server, tier.port)
            finally:
                await cancel_and_wait(probe)
                await cancel_and_wait(watch)
    finally:
        await backend.aclose()


async def _follow_store(tier: GrpcTier, every_s: float) -> None:
    serving = True
    while True:
        await asyncio.sleep(every_s / 2)
        if tier.lease.healthy != serving:
            serving = tier.lease.healthy
            await tier.set_serving(serving)
            log.warning("history_health", serving=serving)


async def _time_store_health(members: MembershipStore, metrics: HistoryMetrics, every_s: float) -> None:
    """history_store_duration_seconds{op="health"}: a store ping, timed, every `every_s`."""
    while True:
        with contextlib.suppress(StoreError), metrics.store_op("health"):
            await members.ping()
        raise_if_cancel_lost()  # a cancelled ping can come back as a store error
        await asyncio.sleep(every_s)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    async with running(settings):
        await stop.wait()
