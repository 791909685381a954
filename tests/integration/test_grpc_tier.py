"""The gRPC tier scaffold (`services.common.grpc_tier.serving_tier`) against a real grpc.aio server
on 127.0.0.1:0 and the in-memory store: health from the public servicer, the lease, the drain order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_tier import GrpcTier, SideListener, TierSpec, serving_tier
from services.common.rpc import insecure_channel
from services.common.settings import Settings
from services.common.store.factory import build_membership_store, open_backend
from services.common.store.memory import memory_backend
from services.common.telemetry import GrpcMetrics, new_registry

SERVICE = "switchboard.test.v1.Tier"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def settings_for(key_prefix: str, tu: float) -> Settings:
    return Settings(node_id="tier-1", host="127.0.0.1", port=0, store_url=f"memory://{key_prefix}",
                    key_prefix=key_prefix, service_token="t", jwt_secret="unused",
                    lease_refresh_s=0.2 * tu, lease_ttl_s=2.0 * tu, log_json=False)


def tier_context(settings: Settings, spec: TierSpec) -> contextlib.AbstractAsyncContextManager[GrpcTier]:
    registry = new_registry()
    members = build_membership_store(open_backend(settings))
    return serving_tier(settings, spec, members=members, registry=registry,
                        grpc_metrics=GrpcMetrics(registry))


async def check(channel: aio.Channel, service: str, tu: float) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0 * tu)).status


def no_servicers(server: aio.Server) -> None:
    return None


async def test_serves_health_then_drains_in_order(key_prefix: str, tu: float) -> None:
    settings = settings_for(key_prefix, tu)
    leases = memory_backend(settings.store_url).members
    seen: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        channel: aio.Channel | None = None

        async def started() -> None:
            assert "tier-1" in leases["test"]  # the lease is claimed before SERVING is reported
            seen.append("started")

        def stopping() -> None:
            assert "tier-1" in leases["test"]  # still leased: runs as health goes NOT_SERVING
            seen.append("stopping")

        async def drain() -> None:
            # The server still answers while the tier drains: NOT_SERVING, and the lease is gone.
            assert channel is not None
            assert await check(channel, "", tu) == NOT_SERVING
            assert await check(channel, SERVICE, tu) == NOT_SERVING
            assert "tier-1" not in leases["test"]
            seen.append("drain")

        tier_stack = contextlib.AsyncExitStack()
        stack.push_async_callback(tier_stack.aclose)  # idempotent: the test stops it first
        spec = TierSpec("test", SERVICE, no_servicers, started=started, stopping=stopping, drain=drain)
        tier = await tier_stack.enter_async_context(tier_context(settings, spec))
        channel = insecure_channel(f"127.0.0.1:{tier.port}")
        stack.push_async_callback(channel.close, None)
        assert tier.address == f"127.0.0.1:{tier.port}"
        assert leases["test"]["tier-1"][0] == tier.address
        assert await check(channel, "", tu) == SERVING
        assert await check(channel, SERVICE, tu) == SERVING

        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=10.0 * tu)
        stack.callback(watch.cancel)
        assert (await watch.read()).status == SERVING
        stopping_task = asyncio.create_task(tier_stack.aclose())  # as on SIGTERM
        assert (await asyncio.wait_for(watch.read(), 5.0 * tu)).status == NOT_SERVING
        await asyncio.wait_for(stopping_task, 5.0 * tu)
        assert seen == ["started", "stopping", "drain"]

        with pytest.raises(aio.AioRpcError) as stopped:  # the server has stopped
            await check(channel, "", tu)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tier_marks_itself_not_serving_and_back(key_prefix: str, tu: float) -> None:
    settings = settings_for(key_prefix, tu)
    async with (tier_context(settings, TierSpec("test", SERVICE, no_servicers)) as tier,
                insecure_channel(f"127.0.0.1:{tier.port}") as channel):
        await tier.set_serving(False)
        assert (await check(channel, "", tu), await check(channel, SERVICE, tu)) == (NOT_SERVING, NOT_SERVING)
        await tier.set_serving(True)
        assert (await check(channel, "", tu), await check(channel, SERVICE, tu)) == (SERVING, SERVING)


async def test_a_failing_drain_still_stops_the_server_and_drops_the_lease(key_prefix: str, tu: float) -> None:
    settings = settings_for(key_prefix, tu)
    leases = memory_backend(settings.store_url).members

    async def drain() -> None:
        raise RuntimeError("drain failed")

    with pytest.raises(RuntimeError, match="drain failed"):
        async with tier_context(settings, TierSpec("test", SERVICE, no_servicers, drain=drain)) as tier:
            port = tier.port
    assert "tier-1" not in leases["test"]
    async with insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(aio.AioRpcError) as stopped:
            await check(channel, "", tu)
        assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_side_listener_is_leased_around_the_tier_and_stops_with_the_server(key_prefix: str, tu: float) -> None:
    """The router's edge-link listener: its address is leased before the tier's own lease (peers
    that see the tier see it too), dropped after it, and the listener stops after the drain,
    with the server's grace."""
    settings = settings_for(key_prefix, tu)
    leases = memory_backend(settings.store_url).members
    seen: list[object] = []

    async def started() -> None:
        assert "tier-1" in leases["test-side"] and "tier-1" in leases["test"]

    async def drain() -> None:
        assert "tier-1" not in leases["test"] and "tier-1" not in leases["test-side"]
        seen.append("drain")

    async def stop(grace_s: float) -> None:
        seen.append(("stop", grace_s))

    spec = TierSpec("test", SERVICE, no_servicers, started=started, drain=drain, stop_grace_s=0.5,
                    side=SideListener("test-side", 4321, stop))
    async with tier_context(settings, spec):
        assert leases["test-side"]["tier-1"][0] == "127.0.0.1:4321"
    assert seen == ["drain", ("stop", 0.5)]
