"""The history process: gRPC server, lease, health; `serve()` builds everything."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from services.common.grpc_gen.history.v1 import history_pb2_grpc as pb_grpc
from services.common.membership import LeaseKeeper
from services.common.process import metrics_listener
from services.common.rpc import new_server
from services.common.settings import Settings
from services.common.store.base import MembershipStore, StoreError
from services.common.store.factory import (
    build_membership_store,
    build_stream_store,
    open_backend,
    stream_limits,
)
from services.common.tasks import cancel_and_wait
from services.common.telemetry import GrpcMetrics, new_registry
from services.history.metrics import HistoryMetrics
from services.history.servicer import HistoryServicer

log = structlog.get_logger("switchboard.history")
SERVICE_NAME = "switchboard.history.v1.History"


@dataclass
class RunningHistory:
    server: aio.Server
    port: int
    health: HealthServicer


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningHistory]:
    """Serve until the context exits; then NOT_SERVING, drop the lease, stop, close the store."""
    registry = new_registry()
    metrics = HistoryMetrics(registry)
    backend = open_backend(settings)
    try:
        store = build_stream_store(backend, stream_limits(settings))
        server = new_server(settings.service_token, GrpcMetrics(registry))
        pb_grpc.add_HistoryServicer_to_server(
            HistoryServicer(store, metrics, read_limit=settings.history_read_limit),
            server,
        )
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        await server.start()
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        address = f"{settings.advertise_host or settings.host}:{port}"
        members = build_membership_store(backend)
        lease = LeaseKeeper(members, "history", settings.node_id, address,
                            ttl_s=settings.lease_ttl_s, refresh_s=settings.lease_refresh_s)
        await lease.start()
        # Health follows the store: the lease keeper's refresh is our store probe.
        watch = asyncio.create_task(_follow_store(lease, health_servicer, settings.lease_refresh_s))
        probe = asyncio.create_task(_time_store_health(members, metrics, settings.lease_refresh_s))
        log.info("history_started", node_id=settings.node_id, address=address)
        try:
            with metrics_listener(settings.host, settings.metrics_port, registry):
                yield RunningHistory(server, port, health_servicer)
        finally:
            await cancel_and_wait(probe)
            await cancel_and_wait(watch)
            await health_servicer.enter_graceful_shutdown()
            await lease.aclose()
            await server.stop(grace=settings.drain_grace_s)
            log.info("history_stopped", node_id=settings.node_id)
    finally:
        await backend.aclose()


async def _follow_store(lease: LeaseKeeper, health_servicer: HealthServicer, every_s: float) -> None:
    serving = True
    while True:
        await asyncio.sleep(every_s / 2)
        if lease.healthy != serving:
            serving = lease.healthy
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await health_servicer.set(SERVICE_NAME, status)
            await health_servicer.set("", status)
            log.warning("history_health", serving=serving)


async def _time_store_health(members: MembershipStore, metrics: HistoryMetrics, every_s: float) -> None:
    """history_store_duration_seconds{op="health"}: a store ping, timed, every `every_s`."""
    while True:
        with contextlib.suppress(StoreError), metrics.store_op("health"):
            await members.ping()
        await asyncio.sleep(every_s)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    async with running(settings):
        await stop.wait()
