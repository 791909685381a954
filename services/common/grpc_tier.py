"""The lifecycle every gRPC tier (router, history) shares: server, health, lease, metrics, drain.

Start: create the server with the tier's servicers and the standard gRPC health servicer, bind,
start serving, claim the side listener's lease (if the tier has one: the router's edge links),
then the membership lease, run the tier's `started` hook, then report SERVING (for "" and for the
tier's service) and serve the Prometheus listener.

Exit, in this order (the drain every tier relies on):
1. health goes NOT_SERVING for good (probes and health watchers stop choosing us), and the
   tier's `stopping` hook runs at the same moment (stop taking new work);
2. the lease is dropped, so peers see us gone at their next membership poll, not on expiry;
   then the side listener's lease (peers that poll in between see the tier without it for
   one poll, and fall back to gRPC for that moment);
3. the tier's `drain` hook hands over or finishes what is in flight (bounded by the tier);
4. the server and the side listener stop together, giving calls and links still running
   `stop_grace_s`.
Stores and clients belong to the tier and are closed by it after this context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.membership import LeaseKeeper
from services.common.process import metrics_listener, settle_heap
from services.common.rpc import new_server
from services.common.settings import Settings
from services.common.store.base import MembershipStore
from services.common.telemetry import GrpcMetrics, loop_lag_metric

log = structlog.get_logger("switchboard.grpc_tier")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class TierSpec:
    """What makes a tier: its membership role, its gRPC service and its own lifecycle steps."""

    role: str  # membership role: "router", "history"
    service_name: str  # full gRPC service name, reported by the health service besides ""
    add_servicers: Callable[[aio.Server], None]
    started: Callable[[], Awaitable[None]] | None = None  # after the lease, before SERVING
    stopping: Callable[[], None] | None = None  # as health goes NOT_SERVING, before the lease drops
    drain: Callable[[], Awaitable[None]] | None = None  # after the lease drops, before the server stops
    stop_grace_s: float = 1.0  # for calls still running when the server stops
    side: SideListener | None = None


@dataclass(frozen=True)
class SideListener:
    """A listener the tier serves besides gRPC, already bound (the router's edge links). Its
    address is leased under its own membership role; it stops with the gRPC server."""

    role: str  # membership role of its address: "router-link"
    port: int
    stop: Callable[[float], Awaitable[None]]  # stop within this grace (seconds)


@dataclass
class GrpcTier:
    """A running tier: its server, bound port, advertised address and lease."""

    spec: TierSpec
    server: aio.Server
    port: int
    address: str
    lease: LeaseKeeper
    _health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped: see _new_health_servicer)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for "" and the tier's service (ignored once draining)."""
        status = SERVING if serving else NOT_SERVING
        await self._health.set(self.spec.service_name, status)
        await self._health.set(health.OVERALL_HEALTH, status)


def _new_health_servicer() -> Any:
    # `health.aio` is grpcio-health-checking's public alias of its asyncio servicer; the stubs
    # in grpc-stubs predate it, hence the ignore.
    return health.aio.HealthServicer()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def serving_tier(settings: Settings, spec: TierSpec, *, members: MembershipStore,
                       registry: CollectorRegistry, grpc_metrics: GrpcMetrics) -> AsyncIterator[GrpcTier]:
    """Serve the tier until the context exits, then drain in the order of the module docstring."""
    server = new_server(settings.service_token, grpc_metrics)
    spec.add_servicers(server)
    health_servicer = _new_health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    address = f"{settings.advertise_host or settings.host}:{port}"
    lease = LeaseKeeper(members, spec.role, settings.node_id, address,
                        ttl_s=settings.lease_ttl_s, refresh_s=settings.lease_refresh_s)
    side = spec.side
    side_lease = None if side is None else LeaseKeeper(
        members, side.role, settings.node_id, f"{settings.advertise_host or settings.host}:{side.port}",
        ttl_s=settings.lease_ttl_s, refresh_s=settings.lease_refresh_s)
    tier = GrpcTier(spec, server, port, address, lease, health_servicer)
    lag = loop_lag_metric(registry)
    try:
        lag.start()
        await server.start()
        if side_lease is not None:
            await side_lease.start()  # before the tier's lease: peers see both at once
        await lease.start()
        if spec.started is not None:
            await spec.started()
        settle_heap()  # what starting the tier made (before SERVING is seen: a storm may follow)
        await tier.set_serving(True)
        log.info("tier_started", role=spec.role, node_id=settings.node_id, address=address)
        with metrics_listener(settings.host, settings.metrics_port, registry):
            yield tier
    finally:
        lag.close()
        await health_servicer.enter_graceful_shutdown()
        if spec.stopping is not None:
            spec.stopping()
        await lease.aclose()
        if side_lease is not None:
            await side_lease.aclose()
        try:
            if spec.drain is not None:
                await spec.drain()
        finally:
            await asyncio.gather(server.stop(grace=spec.stop_grace_s),
                                 *([side.stop(spec.stop_grace_s)] if side is not None else []))
            log.info("tier_stopped", role=spec.role, node_id=settings.node_id)
