"""Client adapter to the history tier, shared by routers and edges.

Picks a live history node from membership (rotating), applies the deadline and the service
credential, and tries a second node on UNAVAILABLE (appends are idempotent by event id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import ErrorCode
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.history.v1 import history_pb2_grpc as hpb_grpc
from services.common.membership import MemberWatcher
from services.common.rpc import credential_metadata, insecure_channel
from services.common.telemetry import GrpcMetrics

HISTORY_SERVICE = "switchboard.history.v1.History"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


class HistoryCallError(Exception):
    """Root of history call errors; `code` is an ErrorCode value."""

    code: str = ErrorCode.INTERNAL


class HistoryUnavailableError(HistoryCallError):
    code = ErrorCode.UNAVAILABLE


class HistoryBusyError(HistoryCallError):
    """History answered, but its store pool stayed full: retry (another node shares the store)."""

    code = ErrorCode.BUSY


class HistoryInvalidError(HistoryCallError):
    code = ErrorCode.INVALID


class HistoryClient:
    def __init__(self, watcher: MemberWatcher, *, service_token: str, timeout_s: float,
                 grpc_metrics: GrpcMetrics | None = None) -> None:
        self._watcher = watcher
        self._grpc_metrics = grpc_metrics
        self._metadata = credential_metadata(service_token)
        self._timeout_s = timeout_s
        # address -> (channel, stub): a stub is built once per channel, not per call. Calls are
        # timed here (grpc_client_*), not by a channel interceptor, which costs a task per call.
        self._channels: dict[str, tuple[aio.Channel, hpb_grpc.HistoryStub]] = {}
        self._next = 0

    def _channels_in_turn(self) -> list[tuple[aio.Channel, hpb_grpc.HistoryStub]]:
        addresses = sorted(self._watcher.members.values())
        if not addresses:
            raise HistoryUnavailableError("no live history node")
        self._next = (self._next + 1) % len(addresses)
        ordered = addresses[self._next:] + addresses[: self._next]
        out = []
        for addr in ordered[:2]:
            pair = self._channels.get(addr)
            if pair is None:
                ch = insecure_channel(addr)
                pair = self._channels[addr] = (ch, hpb_grpc.HistoryStub(ch))
            out.append(pair)
        return out

    def _done(self, method: str, code: str, start: float) -> None:
        if self._grpc_metrics is not None:
            self._grpc_metrics.client_done(HISTORY_SERVICE, method, code, time.perf_counter() - start)

    async def append(self, channel: str, events: Sequence[hpb.Event]) -> hpb.AppendResponse:
        request = hpb.AppendRequest(channel=channel, events=events)
        response: hpb.AppendResponse = await self._call("Append", request)
        return response

    async def append_batch(
        self, appends: Sequence[tuple[str, Sequence[hpb.Event]]],
    ) -> list[hpb.AppendResponse | HistoryCallError]:
        """Append to several channels in one call: one slot per channel, in order, with its
        response or its own error. Raises HistoryCallError when the call fails as a whole."""
        request = hpb.AppendBatchRequest(
            appends=[hpb.AppendRequest(channel=c, events=evs) for c, evs in appends])
        response: hpb.AppendBatchResponse = await self._call("AppendBatch", request)
        return [_outcome(o) for o in response.results]

    async def read(self, channel: str, since_offset: int, *, epoch: str = "", limit: int = 0,
                   latest: bool = False) -> hpb.ReadResponse:
        request = hpb.ReadRequest(channel=channel, since_offset=since_offset, epoch=epoch,
                                  limit=limit, latest=latest)
        response: hpb.ReadResponse = await self._call("Read", request)
        return response

    async def _call(self, method: str, request: object) -> Any:
        last: aio.AioRpcError | None = None
        for _, stub in self._channels_in_turn():
            start = time.perf_counter()
            try:
                response = await getattr(stub, method)(
                    request, timeout=self._timeout_s, metadata=self._metadata)
                self._done(method, "OK", start)
                return response
            except asyncio.CancelledError:
                self._done(method, "CANCELLED", start)
                raise
            except aio.AioRpcError as e:
                self._done(method, e.code().name, start)
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise HistoryInvalidError(e.details() or "invalid request") from e
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise HistoryBusyError(e.details() or "history store busy") from e
                if e.code() not in RETRYABLE:
                    raise HistoryCallError(e.details() or e.code().name) from e
                last = e
        raise HistoryUnavailableError(
            f"history {method} failed: {last.code().name if last else 'no node'}") from last

    async def healthy(self, timeout_s: float = 1.0) -> bool:
        """True when some live history node answers its gRPC health check with SERVING."""
        try:
            channels = self._channels_in_turn()
        except HistoryUnavailableError:
            return False
        for ch, _ in channels:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except aio.AioRpcError:
                continue
        return False

    async def aclose(self) -> None:
        channels, self._channels = self._channels, {}
        for ch, _ in channels.values():
            await ch.close(None)


def _outcome(o: hpb.AppendOutcome) -> hpb.AppendResponse | HistoryCallError:
    if not o.error_code:
        return o.response
    error_type = _ERRORS_BY_CODE.get(o.error_code, HistoryCallError)
    return error_type(o.error_message or o.error_code)


_ERRORS_BY_CODE: dict[str, type[HistoryCallError]] = {
    cls.code: cls for cls in (HistoryUnavailableError, HistoryBusyError, HistoryInvalidError)}
