"""Appends over AppendStream, the router's path to history: real history servers on 127.0.0.1.

- the stream answers every batch by id while several are in flight, offsets stay per channel;
- a store outage is answered per append and the same stream works again once the store is back;
- the client gives up on a node that stops answering (the deadline) and stores the batch on
  another node; and it falls back to unary AppendBatch on a node without AppendStream (an older
  history during a rolling upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.history.v1 import history_pb2_grpc as hpb_grpc
from services.common.history_client import HistoryClient
from services.common.membership import MemberWatcher
from services.common.rpc import credential_metadata, new_server
from services.common.store.base import Keys
from services.common.store.factory import Backend, build_membership_store
from services.common.store.memory import memory_backend
from services.common.telemetry import GrpcMetrics, new_registry
from tests.integration.test_history_service import TOKEN, StartHistory, event, start_history
from tests.support.redis_server import RedisServer

__all__ = ["start_history"]  # the fixture, imported for this module's tests


def batch(*appends: tuple[str, list[hpb.Event]], batch_id: int = 0) -> hpb.AppendBatchRequest:
    return hpb.AppendBatchRequest(
        id=batch_id, appends=[hpb.AppendRequest(channel=c, events=evs) for c, evs in appends])


async def test_stream_answers_each_batch_by_id_with_several_in_flight(start_history: StartHistory) -> None:
    h = await start_history()
    call: Any = h.stub.AppendStream(metadata=credential_metadata(TOKEN))  # type: ignore[call-arg]
    try:
        for i in range(1, 31):  # written without waiting: many batches are in flight at once
            await call.write(batch(("session:shared", [event(f"s{i}")]),
                                   (f"session:own{i}", [event(f"o{i}-a"), event(f"o{i}-b")]),
                                   batch_id=i))
        answers: dict[int, hpb.AppendBatchResponse] = {}
        async with asyncio.timeout(10):
            while len(answers) < 30:
                response = await call.read()
                assert response is not EOF
                answers[response.id] = response
    finally:
        call.cancel()
    assert sorted(answers) == list(range(1, 31))
    shared = sorted(a.results[0].response.results[0].offset for a in answers.values())
    assert shared == list(range(1, 31))  # every batch stored once, offsets consecutive
    for a in answers.values():
        assert not a.results[0].error_code and not a.results[1].error_code
        assert [r.offset for r in a.results[1].response.results] == [1, 2]


async def test_store_outage_is_answered_per_append_and_the_stream_survives(
    start_history: StartHistory, tu: float,
) -> None:
    with RedisServer() as redis:
        h = await start_history(store_url=redis.url, store_timeout_s=0.5 * tu)
        call: Any = h.stub.AppendStream(metadata=credential_metadata(TOKEN))  # type: ignore[call-arg]
        try:
            async def exchange(request: hpb.AppendBatchRequest) -> hpb.AppendBatchResponse:
                await call.write(request)
                async with asyncio.timeout(10 * tu):
                    response: hpb.AppendBatchResponse = await call.read()
                assert response.id == request.id
                return response

            ok = await exchange(batch(("session:s1", [event("e1")]), batch_id=1))
            assert not ok.results[0].error_code

            redis.command("SAVE")
            redis.stop()
            down = await exchange(batch(("session:s1", [event("e2")]), ("session:s2", [event("x")]),
                                        batch_id=2))
            assert [o.error_code for o in down.results] == ["unavailable", "unavailable"]

            redis.start()  # the same port, from the snapshot
            async with asyncio.timeout(10 * tu):
                while True:  # the same stream: the retried batch goes through once redis is back
                    again = await exchange(batch(("session:s1", [event("e2")]), batch_id=3))
                    if not again.results[0].error_code:
                        break
                    await asyncio.sleep(0.1 * tu)
            assert [r.offset for r in again.results[0].response.results] == [2]
        finally:
            call.cancel()


# ---- the client ------------------------------------------------------------------------------


class StalledHistory(hpb_grpc.HistoryServicer):
    """A history node that takes batches and never answers (a stalled process)."""

    def __init__(self) -> None:
        self.received = 0

    async def AppendStream(self, request_iterator: object, context: aio.ServicerContext) -> None:  # type: ignore[override, type-arg]
        while await context.read() is not EOF:
            self.received += 1


class LegacyHistory(hpb_grpc.HistoryServicer):
    """A history node from before AppendStream: only unary AppendBatch, which it stores in memory."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}
        self.calls = 0

    async def AppendBatch(  # type: ignore[override]
        self, request: hpb.AppendBatchRequest, context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> hpb.AppendBatchResponse:
        self.calls += 1
        outcomes = []
        for append in request.appends:
            results = []
            for _ in append.events:
                self.offsets[append.channel] = self.offsets.get(append.channel, 0) + 1
                results.append(hpb.Appended(offset=self.offsets[append.channel]))
            outcomes.append(hpb.AppendOutcome(response=hpb.AppendResponse(epoch="old", results=results)))
        return hpb.AppendBatchResponse(results=outcomes)


@contextlib.asynccontextmanager
async def node(servicer: hpb_grpc.HistoryServicer) -> AsyncIterator[str]:
    server = new_server(TOKEN)
    hpb_grpc.add_HistoryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def client_of(key_prefix: str, registry: Any, *nodes: tuple[str, str],
                    timeout_s: float) -> AsyncIterator[HistoryClient]:
    """A HistoryClient that sees exactly `nodes` (node id, address) as live history nodes."""
    url = f"memory://{key_prefix}"
    members = build_membership_store(Backend(url, Keys(key_prefix), memory=memory_backend(url)))
    for node_id, address in nodes:
        await members.register("history", node_id, address, 30.0)
    watcher = MemberWatcher(members, "history", poll_s=0.1)
    await watcher.start()
    client = HistoryClient(watcher, service_token=TOKEN, timeout_s=timeout_s,
                           grpc_metrics=GrpcMetrics(registry))
    try:
        yield client
    finally:
        await client.aclose()
        await watcher.aclose()


def handled(registry: Any, method: str, code: str) -> float:
    value = registry.get_sample_value("grpc_client_handled_total", {
        "grpc_service": "switchboard.history.v1.History", "grpc_method": method, "grpc_code": code})
    return float(value or 0)


async def test_a_stalled_node_is_given_up_at_the_deadline_and_another_stores_the_batch(
    start_history: StartHistory, key_prefix: str, tu: float,
) -> None:
    good = await start_history()
    stalled = StalledHistory()
    registry = new_registry()
    async with node(stalled) as stalled_address, client_of(
            key_prefix, registry, ("a-stalled", stalled_address),
            ("b-good", f"127.0.0.1:{good.server.port}"), timeout_s=0.5 * tu) as client:
        offsets = []
        for i in range(4):  # the client takes the nodes in turn: some batches meet the stall
            outcome = await client.append_batch([("session:s1", [event(f"e{i}")])])
            assert isinstance(outcome[0], hpb.AppendResponse)
            offsets.append(outcome[0].results[0].offset)
    assert offsets == [1, 2, 3, 4]
    assert stalled.received >= 1
    assert handled(registry, "AppendStream", "DEADLINE_EXCEEDED") >= 1


async def test_a_node_without_append_stream_gets_unary_calls(key_prefix: str) -> None:
    legacy = LegacyHistory()
    registry = new_registry()
    async with node(legacy) as address, client_of(
            key_prefix, registry, ("old", address), timeout_s=5.0) as client:
        first = await client.append_batch([("session:s1", [event("e1"), event("e2")])])
        second = await client.append_batch([("session:s1", [event("e3")]), ("session:s2", [event("x")])])
    assert [r.offset for r in first[0].results] == [1, 2]  # type: ignore[union-attr]
    assert [[r.offset for r in o.results] for o in second] == [[3], [1]]  # type: ignore[union-attr]
    assert legacy.calls == 2
    assert handled(registry, "AppendStream", grpc.StatusCode.UNIMPLEMENTED.name) == 1
    assert handled(registry, "AppendBatch", "OK") == 2


async def test_concurrent_batches_share_one_stream(start_history: StartHistory, key_prefix: str) -> None:
    h = await start_history()
    registry = new_registry()
    async with client_of(key_prefix, registry, ("only", f"127.0.0.1:{h.server.port}"),
                         timeout_s=5.0) as client:
        results = await asyncio.gather(*(
            client.append_batch([(f"session:c{i}", [event(f"c{i}")])]) for i in range(50)))
        assert all(isinstance(r[0], hpb.AppendResponse) for r in results)
        assert handled(registry, "AppendStream", "OK") == 0  # still open: one stream, no calls
    assert handled(registry, "AppendStream", "CANCELLED") == 1  # one stream, closed by the client
    assert handled(registry, "AppendBatch", "OK") == 0
