"""The gRPC metrics interceptors against a real in-process grpc.aio server on 127.0.0.1:0.

The server is built by `new_server` exactly as router and history build theirs; the client
channel by `insecure_channel`, as every tier opens its channels. Each side has its own registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.grpc_gen.routing.v1 import routing_pb2_grpc as pb_grpc
from services.common.rpc import credential_metadata, insecure_channel, new_server
from services.common.telemetry import GrpcMetrics, new_registry

TOKEN = "test-service-token"
ROUTER = "switchboard.routing.v1.Router"
AUTH = credential_metadata(TOKEN)


class EchoRouter(pb_grpc.RouterServicer):
    """A router stand-in: Publish acks or refuses, Stats is slow, Owner fails, Connect echoes."""

    async def Publish(self, request: pb.PublishRequest, context: aio.ServicerContext) -> pb.PublishAck:  # type: ignore[type-arg]
        if request.channel == "bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad channel")
        return pb.PublishAck(request_id=request.request_id)

    async def Stats(self, request: pb.StatsRequest, context: aio.ServicerContext) -> pb.StatsResponse:  # type: ignore[type-arg]
        await asyncio.sleep(30)
        return pb.StatsResponse()

    async def Owner(self, request: pb.OwnerRequest, context: aio.ServicerContext) -> pb.OwnerResponse:  # type: ignore[type-arg]
        raise RuntimeError("boom")

    async def Connect(self, request_iterator: object, context: aio.ServicerContext) -> None:  # type: ignore[override, type-arg]
        while (message := await context.read()) is not EOF:
            await context.write(pb.RouterMessage(ack=pb.PublishAck(
                request_id=message.publish.request_id)))


@dataclass
class Rig:
    server_registry: CollectorRegistry
    client_registry: CollectorRegistry
    channel: aio.Channel

    @property
    def stub(self) -> pb_grpc.RouterStub:
        return pb_grpc.RouterStub(self.channel)

    def value(self, side: str, method: str, code: str, service: str = ROUTER) -> float:
        registry = self.server_registry if side == "server" else self.client_registry
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        return registry.get_sample_value(f"grpc_{side}_handled_total", labels) or 0.0

    def seconds_count(self, side: str, method: str, code: str) -> float:
        registry = self.server_registry if side == "server" else self.client_registry
        labels = {"grpc_service": ROUTER, "grpc_method": method, "grpc_code": code}
        return registry.get_sample_value(f"grpc_{side}_handling_seconds_count", labels) or 0.0

    async def until(self, side: str, method: str, code: str, n: float = 1.0) -> None:
        """The server counts a call when its handler ends, just after the client sees it end."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.value(side, method, code) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{side} {method} {code} < {n}")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    server_registry, client_registry = new_registry(), new_registry()
    server = new_server(TOKEN, GrpcMetrics(server_registry))
    pb_grpc.add_RouterServicer_to_server(EchoRouter(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = insecure_channel(f"127.0.0.1:{port}", GrpcMetrics(client_registry))
    try:
        yield Rig(server_registry, client_registry, channel)
    finally:
        await channel.close(None)
        await server.stop(grace=None)


async def test_unary_calls_are_counted_by_status_on_both_sides(rig: Rig) -> None:
    for i in range(3):
        ack = await rig.stub.Publish(pb.PublishRequest(request_id=i, channel="session:a"),
                                     timeout=5, metadata=AUTH)
        assert ack.request_id == i
    with pytest.raises(aio.AioRpcError) as bad:
        await rig.stub.Publish(pb.PublishRequest(channel="bad"), timeout=5, metadata=AUTH)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as failed:
        await rig.stub.Owner(pb.OwnerRequest(channel="x"), timeout=5, metadata=AUTH)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    for side in ("server", "client"):
        assert rig.value(side, "Publish", "OK") == 3
        assert rig.seconds_count(side, "Publish", "OK") == 3
        assert rig.value(side, "Publish", "INVALID_ARGUMENT") == 1
        assert rig.value(side, "Owner", "UNKNOWN") == 1


async def test_calls_refused_by_the_credential_check_are_counted(rig: Rig) -> None:
    with pytest.raises(aio.AioRpcError) as refused:
        await rig.stub.Publish(pb.PublishRequest(channel="session:a"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rig.value("client", "Publish", "UNAUTHENTICATED") == 1
    # The server counts a call once its handler has finished, which may be after the client
    # has the status.
    await rig.until("server", "Publish", "UNAUTHENTICATED")
    assert rig.value("server", "Publish", "UNAUTHENTICATED") == 1


async def test_a_deadline_is_counted_as_deadline_exceeded_by_the_client(rig: Rig) -> None:
    with pytest.raises(aio.AioRpcError) as late:
        await rig.stub.Stats(pb.StatsRequest(), timeout=0.2, metadata=AUTH)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert rig.value("client", "Stats", "DEADLINE_EXCEEDED") == 1
    await rig.until("server", "Stats", "CANCELLED")  # the handler was cancelled


async def test_a_caller_that_gives_up_ends_the_call_and_counts_it_cancelled(rig: Rig) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await rig.stub.Stats(pb.StatsRequest(), timeout=30, metadata=AUTH)
    assert rig.value("client", "Stats", "CANCELLED") == 1
    await rig.until("server", "Stats", "CANCELLED")  # ended now, not after 30 s


async def test_a_stream_keeps_read_and_write_and_is_counted_when_it_ends(rig: Rig) -> None:
    call: Any = rig.stub.Connect(metadata=AUTH)  # type: ignore[call-arg]
    for i in range(1, 4):
        await call.write(pb.EdgeMessage(publish=pb.PublishRequest(request_id=i)))
        reply = await call.read()
        assert reply.ack.request_id == i
    assert rig.value("server", "Connect", "OK") == 0  # still open: not counted yet
    await call.done_writing()
    assert await call.read() is EOF
    await rig.until("server", "Connect", "OK")
    assert rig.seconds_count("server", "Connect", "OK") == 1


async def test_health_checks_are_counted_under_the_health_service(rig: Rig) -> None:
    resp = await health_pb2_grpc.HealthStub(rig.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert rig.value("server", "Check", "OK", service="grpc.health.v1.Health") == 1
    assert rig.value("client", "Check", "OK", service="grpc.health.v1.Health") == 1


def test_every_registry_carries_process_metrics() -> None:
    registry = new_registry()
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    assert registry.get_sample_value("process_resident_memory_bytes") is not None
    assert any(m.name == "python_info" for m in registry.collect())
