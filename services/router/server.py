"""The router process: gRPC server, edge link listener, lease, membership watchers, health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from grpc import aio
from prometheus_client import CollectorRegistry

from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.grpc_tier import SideListener, TierSpec, serving_tier
from services.common.history_client import HistoryClient
from services.common.membership import LINK_ROLE, MemberWatcher
from services.common.settings import Settings
from services.common.store.base import MembershipStore
from services.common.store.factory import Backend, build_membership_store, open_backend
from services.common.telemetry import GrpcMetrics, new_registry
from services.history.metrics import HistoryMetrics
from services.history.store.factory import build_stream_store, stream_limits
from services.history.writer import StreamWriter
from services.router.appender import BatchAppendClient, DirectAppends
from services.router.link_server import LinkServer
from services.router.metrics import RouterMetrics
from services.router.ownership import Ownership
from services.router.publisher import Publisher
from services.router.servicer import RouterServicer
from services.router.store.factory import build_ownership_store

log = structlog.get_logger("switchboard.router")
SERVICE_NAME = "switchboard.routing.v1.Router"


@dataclass
class RunningRouter:
    server: aio.Server
    port: int
    ownership: Ownership
    link_port: int  # 0: stream links are off


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningRouter]:
    registry = new_registry()
    metrics = RouterMetrics(registry)
    grpc_metrics = GrpcMetrics(registry)
    async with contextlib.AsyncExitStack() as closing:  # the store goes last
        backend = open_backend(settings)
        closing.push_async_callback(backend.aclose)
        members = build_membership_store(backend)
        ownership = Ownership(settings.node_id, build_ownership_store(backend, settings.history_ttl_s),
                              refresh_s=max(settings.membership_poll_s * 2, 1.0))
        await ownership.start()
        closing.push_async_callback(ownership.aclose)  # before the store closes

        def ring_changed(members: dict[str, str]) -> None:
            ownership.set_routers(set(members))
            metrics.ring_changes.inc()

        routers = MemberWatcher(members, "router", poll_s=settings.membership_poll_s,
                                on_change=ring_changed)
        metrics.watch(lambda: sum(1 for c in list(ownership.subs) if ownership.owns(c)),
                      lambda: len(ownership.routers))
        closing.push_async_callback(routers.aclose)
        appends = await _appends(settings, backend, members, registry, grpc_metrics, closing)
        publisher = Publisher(ownership, appends, routers, metrics,
                              service_token=settings.service_token, timeout_s=settings.forward_timeout_s,
                              batch_max=settings.publish_batch_max,
                              pipeline_max=settings.router_link_queue_max, grpc_metrics=grpc_metrics)

        servicer = RouterServicer(ownership, publisher, metrics,
                                  link_queue_max=settings.router_link_queue_max)
        side = None
        if settings.link_port >= 0:  # the edges' stream links, next to the Connect stream
            links = LinkServer(servicer, metrics, settings)
            closing.push_async_callback(links.stop, 0.0)  # when serving never started
            side = SideListener(LINK_ROLE, await links.start(), links.stop)

        def add_servicers(server: aio.Server) -> None:
            pb_grpc.add_RouterServicer_to_server(servicer, server)

        async def hand_over() -> None:
            # Forward publishes to the new owners while edges see the new router set and
            # re-attach (one membership poll), finish the publishes already queued, then the
            # server closes the streams.
            if ownership.links:
                await asyncio.sleep(min(settings.membership_poll_s * 3, settings.drain_grace_s))
            await publisher.aclose(grace_s=settings.drain_grace_s)

        spec = TierSpec("router", SERVICE_NAME, add_servicers,
                        started=routers.start,  # know the ring before we report SERVING
                        stopping=ownership.drain,  # publishes reaching us now go to the others
                        drain=hand_over, stop_grace_s=1.0, side=side)
        async with serving_tier(settings, spec, members=members, registry=registry,
                                grpc_metrics=grpc_metrics) as tier:
            yield RunningRouter(tier.server, tier.port, ownership, side.port if side else 0)
    log.info("router_stopped", node_id=settings.node_id)


async def _appends(settings: Settings, backend: Backend, members: MembershipStore, registry: CollectorRegistry,
                   grpc_metrics: GrpcMetrics, closing: contextlib.AsyncExitStack) -> BatchAppendClient:
    """Where the owner's appends go (`append_via`): the store, with history's write path in this
    process (no history hop), or a history node."""
    if settings.append_via == "store":
        store = build_stream_store(backend, stream_limits(settings), piped_appends=settings.store_append_pipe)
        return DirectAppends(StreamWriter(store, HistoryMetrics(registry)), timeout_s=settings.rpc_timeout_s)
    histories = MemberWatcher(members, "history", poll_s=settings.membership_poll_s)
    history = HistoryClient(histories, service_token=settings.service_token,
                            timeout_s=settings.rpc_timeout_s, grpc_metrics=grpc_metrics)
    closing.push_async_callback(history.aclose)
    closing.push_async_callback(histories.aclose)
    await histories.start()
    return history


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    async with running(settings):
        await stop.wait()
