"""The history gRPC service over a real channel: an in-process server on 127.0.0.1:0.

The server is `services.history.server.running`, exactly as the history process runs it, on the
in-memory store under a name unique to the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import wire
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.history.v1 import history_pb2_grpc as hpb_grpc
from services.common.rpc import credential_metadata, insecure_channel
from services.common.settings import Settings
from services.common.store.memory import memory_backend
from services.history.server import SERVICE_NAME, RunningHistory, running

TOKEN = "test-service-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class HistoryUnderTest:
    settings: Settings
    server: RunningHistory
    channel: aio.Channel

    @property
    def stub(self) -> hpb_grpc.HistoryStub:
        return hpb_grpc.HistoryStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    async def append(self, channel: str, *events: hpb.Event) -> hpb.AppendResponse:
        response: hpb.AppendResponse = await self.stub.Append(
            hpb.AppendRequest(channel=channel, events=events),
            timeout=5.0, metadata=credential_metadata(TOKEN))
        return response

    async def read(self, channel: str, since: int = 0, **kw: Any) -> hpb.ReadResponse:
        response: hpb.ReadResponse = await self.stub.Read(
            hpb.ReadRequest(channel=channel, since_offset=since, **kw),
            timeout=5.0, metadata=credential_metadata(TOKEN))
        return response

    async def status(self, service: str = "") -> int:
        resp = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
        return int(resp.status)


StartHistory = Callable[..., Awaitable[HistoryUnderTest]]


@pytest.fixture
async def start_history(key_prefix: str, tu: float) -> AsyncIterator[StartHistory]:
    """Factory: a running history server (settings overridable) and a channel to it."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> HistoryUnderTest:
            fields: dict[str, Any] = {
                "node_id": f"history-{key_prefix}", "host": "127.0.0.1", "port": 0,
                "store_url": f"memory://{key_prefix}", "key_prefix": key_prefix,
                "service_token": TOKEN, "jwt_secret": "unused", "drain_grace_s": 0.5 * tu,
                "lease_refresh_s": 0.2 * tu, "lease_ttl_s": 2.0 * tu, "log_json": False,
            }
            settings = Settings(**{**fields, **overrides})
            server = await stack.enter_async_context(running(settings))
            channel = insecure_channel(f"127.0.0.1:{server.port}")
            stack.push_async_callback(channel.close, None)
            return HistoryUnderTest(settings, server, channel)

        yield start


def event(event_id: str, content: str = "hi", priority: int = 0) -> hpb.Event:
    body = wire.encode_body("chat_message", {"content": content}, event_id=event_id,
                            channel="session:s1")
    return hpb.Event(id=event_id, type="chat_message", body=body, priority=priority)


def frame_of(stored: hpb.StoredEvent) -> dict[str, Any]:
    obj = orjson.loads(stored.frame)
    assert isinstance(obj, dict)
    return obj


async def rpc_error(call: Awaitable[object]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    return info.value


async def wait_status(h: HistoryUnderTest, wanted: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await h.status() == wanted and await h.status(SERVICE_NAME) == wanted:
                return
            await asyncio.sleep(0.02)


# ---- Append ----------------------------------------------------------------------------------


async def test_append_batch_stores_each_channel_and_isolates_an_invalid_one(
    start_history: StartHistory,
) -> None:
    h = await start_history()
    await h.append("session:s1", event("e1"))
    response: hpb.AppendBatchResponse = await h.stub.AppendBatch(hpb.AppendBatchRequest(appends=[
        hpb.AppendRequest(channel="session:s1", events=[event("e2"), event("e3")]),
        hpb.AppendRequest(channel="session:s2", events=[hpb.Event(id="bad", body=b"not json")]),
        hpb.AppendRequest(channel="session:s2", events=[event("x1")]),
    ]), timeout=5.0, metadata=credential_metadata(TOKEN))

    first, bad, other = response.results
    assert not first.error_code and [r.offset for r in first.response.results] == [2, 3]
    assert bad.error_code == "invalid" and not bad.response.results
    assert not other.error_code and [r.offset for r in other.response.results] == [1]
    assert [frame_of(e)["id"] for e in (await h.read("session:s1")).events] == ["e1", "e2", "e3"]


async def test_append_assigns_consecutive_offsets_and_one_epoch(start_history: StartHistory) -> None:
    h = await start_history()
    first = await h.append("session:s1", event("e1"), event("e2"), event("e3"))
    assert [r.offset for r in first.results] == [1, 2, 3]
    assert not any(r.duplicate for r in first.results)
    assert first.epoch
    second = await h.append("session:s1", event("e4"))
    assert [r.offset for r in second.results] == [4]
    assert second.epoch == first.epoch
    other = await h.append("session:s2", event("x1"))
    assert [r.offset for r in other.results] == [1]  # offsets are per channel


async def test_duplicate_id_returns_the_first_offset(start_history: StartHistory) -> None:
    h = await start_history()
    await h.append("session:s1", event("e1"), event("e2"))
    again = await h.append("session:s1", event("e3"), event("e1", content="retried"), event("e4"))
    assert [(r.offset, r.duplicate) for r in again.results] == [(3, False), (1, True), (4, False)]
    got = await h.read("session:s1")
    assert [e.offset for e in got.events] == [1, 2, 3, 4]
    assert frame_of(got.events[0])["payload"] == {"content": "hi"}  # not stored again


@pytest.mark.parametrize("request_", [
    hpb.AppendRequest(channel="session:s1"),
    hpb.AppendRequest(channel="", events=[event("e1")]),
    hpb.AppendRequest(channel="session:s1", events=[event("")]),
    hpb.AppendRequest(channel="session:s1", events=[event("x" * 129)]),
    hpb.AppendRequest(channel="session:s1", events=[hpb.Event(id="e1", type="chat_message", body=b"[1,2]")]),
    hpb.AppendRequest(channel="session:s1", events=[hpb.Event(id="e1", type="chat_message", body=b"hello")]),
    hpb.AppendRequest(channel="session:s1", events=[hpb.Event(id="e1", type="chat_message", body=b"")]),
    hpb.AppendRequest(channel="session:s1", events=[event("ok"), hpb.Event(id="e2", body=b"{")]),
], ids=["no-events", "no-channel", "empty-id", "long-id", "array-body", "text-body", "empty-body",
        "one-bad-of-two"])
async def test_invalid_append_is_invalid_argument_and_stores_nothing(
    start_history: StartHistory, request_: hpb.AppendRequest,
) -> None:
    h = await start_history()
    err = await rpc_error(h.stub.Append(request_, timeout=5.0, metadata=credential_metadata(TOKEN)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = await h.read("session:s1")
    assert got.top_offset == 0
    assert not got.events


async def test_too_many_events_in_one_append_is_invalid(start_history: StartHistory) -> None:
    h = await start_history()
    request = hpb.AppendRequest(channel="session:s1", events=[event(f"e{i}") for i in range(1_001)])
    err = await rpc_error(h.stub.Append(request, timeout=5.0, metadata=credential_metadata(TOKEN)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- the service credential ------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [(), credential_metadata("wrong-token"), (("authorization", TOKEN),)],
                         ids=["none", "wrong-token", "not-bearer"])
async def test_calls_without_the_credential_are_unauthenticated(
    start_history: StartHistory, metadata: tuple[tuple[str, str], ...],
) -> None:
    h = await start_history()
    err = await rpc_error(h.stub.Append(hpb.AppendRequest(channel="session:s1", events=[event("e1")]),
                                        timeout=5.0, metadata=metadata))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await rpc_error(h.stub.Read(hpb.ReadRequest(channel="session:s1"), timeout=5.0, metadata=metadata))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await h.read("session:s1")).top_offset == 0  # nothing was appended


async def test_health_check_needs_no_credential(start_history: StartHistory) -> None:
    h = await start_history()
    assert await h.status() == SERVING
    assert await h.status(SERVICE_NAME) == SERVING


# ---- Read ------------------------------------------------------------------------------------


async def test_read_returns_sealed_frames(start_history: StartHistory) -> None:
    h = await start_history()
    first = event("e1", "one")
    appended = await h.append("session:s1", first, event("e2", "two", priority=3))
    got = await h.read("session:s1")
    assert got.epoch == appended.epoch
    assert (got.top_offset, got.first_offset) == (2, 1)
    assert got.complete
    assert not got.epoch_changed
    frames = [frame_of(e) for e in got.events]
    assert [(f["id"], f["offset"], f["epoch"]) for f in frames] == [("e1", 1, got.epoch), ("e2", 2, got.epoch)]
    assert [f["payload"]["content"] for f in frames] == ["one", "two"]
    assert [e.priority for e in got.events] == [1, 3]  # 0 on append means 1
    # The frame is the body with offset and epoch spliced in, byte for byte.
    assert got.events[0].frame == wire.seal(first.body, 1, got.epoch)


async def test_read_since_limit_and_latest(start_history: StartHistory) -> None:
    h = await start_history()
    await h.append("session:s1", *(event(f"e{i}") for i in range(1, 11)))
    after = await h.read("session:s1", since=4, limit=3)
    assert [e.offset for e in after.events] == [5, 6, 7]
    assert after.complete
    newest = await h.read("session:s1", limit=3, latest=True)
    assert [e.offset for e in newest.events] == [8, 9, 10]
    assert newest.complete
    caught_up = await h.read("session:s1", since=10)
    assert not caught_up.events
    assert caught_up.complete
    assert caught_up.top_offset == 10


async def test_read_is_capped_by_the_server_read_limit(start_history: StartHistory) -> None:
    h = await start_history(history_read_limit=4)
    await h.append("session:s1", *(event(f"e{i}") for i in range(1, 11)))
    got = await h.read("session:s1", limit=100)
    assert [e.offset for e in got.events] == [1, 2, 3, 4]
    got = await h.read("session:s1")  # 0 means the server default
    assert len(got.events) == 4


async def test_read_of_an_unknown_channel(start_history: StartHistory) -> None:
    h = await start_history()
    got = await h.read("session:nobody")
    assert (got.epoch, got.top_offset, got.first_offset, list(got.events)) == ("", 0, 0, [])
    assert got.complete
    assert not got.epoch_changed


async def test_unknown_epoch_is_epoch_changed_and_not_complete(start_history: StartHistory) -> None:
    h = await start_history()
    appended = await h.append("session:s1", event("e1"), event("e2"))
    got = await h.read("session:s1", since=1, epoch="not-" + appended.epoch)
    assert got.epoch_changed
    assert not got.complete
    assert got.epoch == appended.epoch
    same = await h.read("session:s1", since=1, epoch=appended.epoch)
    assert not same.epoch_changed
    assert same.complete
    assert [e.offset for e in same.events] == [2]


async def test_since_below_the_trimmed_range_is_not_complete(start_history: StartHistory) -> None:
    h = await start_history(history_max_len=3)
    await h.append("session:s1", *(event(f"e{i}") for i in range(1, 8)))
    trimmed = await h.read("session:s1", since=0)
    assert (trimmed.top_offset, trimmed.first_offset) == (7, 5)
    assert [e.offset for e in trimmed.events] == [5, 6, 7]
    assert not trimmed.complete
    assert not (await h.read("session:s1", since=3)).complete
    edge = await h.read("session:s1", since=4)  # offset 5 is the first held: nothing is missing
    assert edge.complete
    assert [e.offset for e in edge.events] == [5, 6, 7]
    assert (await h.read("session:s1", limit=2, latest=True)).complete  # newest N asks for no range


# ---- the store going away --------------------------------------------------------------------


async def test_store_unavailable_is_unavailable_and_health_follows_it(
    start_history: StartHistory, tu: float,
) -> None:
    h = await start_history()
    await h.append("session:s1", event("e1"))
    store = memory_backend(h.settings.store_url)
    refresh_s = h.settings.lease_refresh_s
    store.available = False
    try:
        err = await rpc_error(h.append("session:s1", event("e2")))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        err = await rpc_error(h.read("session:s1"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        await wait_status(h, NOT_SERVING, 4 * refresh_s + 1.0 * tu)
    finally:
        store.available = True
    await wait_status(h, SERVING, 4 * refresh_s + 1.0 * tu)
    again = await h.append("session:s1", event("e2"))
    assert [r.offset for r in again.results] == [2]  # the failed append left nothing behind


async def test_shutdown_goes_not_serving_first_and_drops_the_lease(
    start_history: StartHistory, tu: float,
) -> None:
    h = await start_history()  # stays up: a second server on the same store is the one stopped
    store = memory_backend(h.settings.store_url)
    async with contextlib.AsyncExitStack() as stack:  # closes everything if a check fails
        server_stack = contextlib.AsyncExitStack()
        stack.push_async_callback(server_stack.aclose)  # idempotent
        other = await server_stack.enter_async_context(
            running(h.settings.model_copy(update={"node_id": "h2"})))
        assert set(store.members["history"]) == {h.settings.node_id, "h2"}
        channel = await stack.enter_async_context(insecure_channel(f"127.0.0.1:{other.port}"))
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10.0 * tu)
        stack.callback(watch.cancel)
        assert (await watch.read()).status == SERVING
        stopping = asyncio.create_task(server_stack.aclose())  # the server's shutdown, as on SIGTERM
        assert (await asyncio.wait_for(watch.read(), 5.0 * tu)).status == NOT_SERVING
        await asyncio.wait_for(stopping, 5.0 * tu)
    assert set(store.members["history"]) == {h.settings.node_id}  # dropped at once, not on expiry
    assert await h.status() == SERVING
