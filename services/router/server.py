"""The router process: gRPC server, lease, membership watchers, health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.history_client import HistoryClient
from services.common.membership import LeaseKeeper, MemberWatcher
from services.common.process import metrics_listener
from services.common.rpc import new_server
from services.common.settings import Settings
from services.common.store.factory import (
    build_membership_store,
    build_ownership_store,
    open_backend,
)
from services.common.telemetry import GrpcMetrics, new_registry
from services.router.metrics import RouterMetrics
from services.router.ownership import Ownership
from services.router.publisher import Publisher
from services.router.servicer import RouterServicer

log = structlog.get_logger("switchboard.router")
SERVICE_NAME = "switchboard.routing.v1.Router"


@dataclass
class RunningRouter:
    server: aio.Server
    port: int
    ownership: Ownership


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningRouter]:
    registry = new_registry()
    metrics = RouterMetrics(registry)
    grpc_metrics = GrpcMetrics(registry)
    backend = open_backend(settings)
    members = build_membership_store(backend)
    ownership = Ownership(settings.node_id, build_ownership_store(backend, settings.history_ttl_s),
                          refresh_s=max(settings.membership_poll_s * 2, 1.0))

    def ring_changed(members: dict[str, str]) -> None:
        ownership.set_routers(set(members))
        metrics.ring_changes.inc()

    routers = MemberWatcher(members, "router", poll_s=settings.membership_poll_s,
                            on_change=ring_changed)
    metrics.watch(lambda: sum(1 for c in list(ownership.subs) if ownership.owns(c)),
                  lambda: len(ownership.routers))
    histories = MemberWatcher(members, "history", poll_s=settings.membership_poll_s)
    history = HistoryClient(histories, service_token=settings.service_token,
                            timeout_s=settings.rpc_timeout_s, grpc_metrics=grpc_metrics)
    publisher = Publisher(ownership, history, routers, metrics,
                          service_token=settings.service_token, timeout_s=settings.forward_timeout_s,
                          batch_max=settings.publish_batch_max,
                          pipeline_max=settings.router_link_queue_max, grpc_metrics=grpc_metrics)
    server = new_server(settings.service_token, grpc_metrics)
    pb_grpc.add_RouterServicer_to_server(
        RouterServicer(ownership, publisher, metrics, link_queue_max=settings.router_link_queue_max),
        server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    address = f"{settings.advertise_host or settings.host}:{port}"
    lease = LeaseKeeper(members, "router", settings.node_id, address,
                        ttl_s=settings.lease_ttl_s, refresh_s=settings.lease_refresh_s)
    try:
        await histories.start()
        await server.start()
        await lease.start()
        await routers.start()
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("router_started", node_id=settings.node_id, address=address)
        with metrics_listener(settings.host, settings.metrics_port, registry):
            yield RunningRouter(server, port, ownership)
    finally:
        # Drain: stop being chosen (health, lease) and hand channels over: we forward publishes to
        # the new owners while edges see the new router set and re-attach (one membership poll),
        # finish the publishes already queued, then close the streams; the store goes last.
        await health_servicer.enter_graceful_shutdown()
        ownership.drain()
        await lease.aclose()
        if ownership.links:
            await asyncio.sleep(min(settings.membership_poll_s * 3, settings.drain_grace_s))
        await publisher.aclose(grace_s=settings.drain_grace_s)
        await server.stop(grace=1.0)
        await routers.aclose()
        await histories.aclose()
        await history.aclose()
        await backend.aclose()
        log.info("router_stopped", node_id=settings.node_id)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    async with running(settings):
        await stop.wait()
