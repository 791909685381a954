"""Client adapter to the history tier, shared by routers and edges.

Picks a live history node from membership (rotating), applies the deadline and the service
credential, and tries a second node on UNAVAILABLE (appends are idempotent by event id).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import structlog
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import ErrorCode
from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.grpc_gen.history.v1 import history_pb2_grpc as hpb_grpc
from services.common.membership import MemberWatcher
from services.common.rpc import credential_metadata, insecure_channel
from services.common.tasks import cancel_and_wait
from services.common.telemetry import GrpcMetrics

log = structlog.get_logger("switchboard.history_client")

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
        self._streams: dict[str, _AppendStream] = {}
        self._unary_only: set[str] = set()  # nodes that answered AppendStream with UNIMPLEMENTED

    def _channels_in_turn(self) -> list[tuple[str, tuple[aio.Channel, hpb_grpc.HistoryStub]]]:
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
            out.append((addr, pair))
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
        """Append to several channels at once: one slot per channel, in order, with its response
        or its own error. Raises HistoryCallError when the batch fails as a whole.

        The batch travels on the node's AppendStream (one stream message each way). A stream
        that breaks or does not answer within the deadline is torn down, and the batch is tried
        on the next node (appends are idempotent by event id). A node without AppendStream (an
        older history during a rolling upgrade) gets unary AppendBatch calls.
        """
        request = hpb.AppendBatchRequest(
            appends=[hpb.AppendRequest(channel=c, events=evs) for c, evs in appends])
        last = "no node"
        for address, (_, stub) in self._channels_in_turn():
            if address in self._unary_only:
                try:
                    response: hpb.AppendBatchResponse = await self._unary(stub, "AppendBatch", request)
                except aio.AioRpcError as e:
                    last = e.code().name
                    continue
                return [outcome_of(o) for o in response.results]
            stream = self._streams.get(address)
            if stream is None or stream.broken:
                stream = self._streams[address] = _AppendStream(stub, self._metadata, self._stream_ended)
            try:
                streamed = await stream.call(request, self._timeout_s)
            except _StreamUnimplemented:
                self._unary_only.add(address)
                log.info("history_append_stream_unsupported", address=address)
                return await self.append_batch(appends)
            except _StreamFailed as e:
                last = e.code
                continue
            return [outcome_of(o) for o in streamed.results]
        raise HistoryUnavailableError(f"history AppendStream failed: {last}")

    def _stream_ended(self, code: str, started: float) -> None:
        self._done("AppendStream", code, started)

    async def read(self, channel: str, since_offset: int, *, epoch: str = "", limit: int = 0,
                   latest: bool = False) -> hpb.ReadResponse:
        request = hpb.ReadRequest(channel=channel, since_offset=since_offset, epoch=epoch,
                                  limit=limit, latest=latest)
        response: hpb.ReadResponse = await self._call("Read", request)
        return response

    async def _call(self, method: str, request: object) -> Any:
        last: aio.AioRpcError | None = None
        for _, (_, stub) in self._channels_in_turn():
            try:
                return await self._unary(stub, method, request)
            except aio.AioRpcError as e:
                last = e
        raise HistoryUnavailableError(
            f"history {method} failed: {last.code().name if last else 'no node'}") from last

    async def _unary(self, stub: hpb_grpc.HistoryStub, method: str, request: object) -> Any:
        """One timed call to one node. A status worth trying on another node is raised as the
        AioRpcError; any other becomes its HistoryCallError."""
        start = time.perf_counter()
        try:
            response = await getattr(stub, method)(
                request, timeout=self._timeout_s, metadata=self._metadata)
        except asyncio.CancelledError:
            self._done(method, "CANCELLED", start)
            raise
        except aio.AioRpcError as e:
            self._done(method, e.code().name, start)
            _raise_unless_retryable(e)
            raise
        self._done(method, "OK", start)
        return response

    async def healthy(self, timeout_s: float = 1.0) -> bool:
        """True when some live history node answers its gRPC health check with SERVING."""
        try:
            channels = self._channels_in_turn()
        except HistoryUnavailableError:
            return False
        for _, (ch, _) in channels:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except aio.AioRpcError:
                continue
        return False

    async def aclose(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            await stream.aclose()
        channels, self._channels = self._channels, {}
        for ch, _ in channels.values():
            await ch.close(None)


def outcome_of(o: hpb.AppendOutcome) -> hpb.AppendResponse | HistoryCallError:
    """One append of an AppendBatch answer: the response, or the error its code names."""
    if not o.error_code:
        return o.response
    return call_error(o.error_code, o.error_message)


def call_error(code: str, message: str) -> HistoryCallError:
    """The error an append's failure code names (retryable or not, as the code says)."""
    return _ERRORS_BY_CODE.get(code, HistoryCallError)(message or code)


_ERRORS_BY_CODE: dict[str, type[HistoryCallError]] = {
    cls.code: cls for cls in (HistoryUnavailableError, HistoryBusyError, HistoryInvalidError)}


def _raise_unless_retryable(e: aio.AioRpcError) -> None:
    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
        raise HistoryInvalidError(e.details() or "invalid request") from e
    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise HistoryBusyError(e.details() or "history store busy") from e
    if e.code() not in RETRYABLE:
        raise HistoryCallError(e.details() or e.code().name) from e


class _StreamFailed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _StreamUnimplemented(_StreamFailed):
    pass


class _AppendStream:
    """One AppendStream call to one history node, shared by every batch of this router.

    Batches are written one at a time (a lock: grpc allows one write in flight) and matched to
    their answers by id; the reader task owns the call. On a broken stream, a missed deadline or
    close, every waiting batch fails with _StreamFailed, and the owner opens a new stream for
    the next batch.
    """

    def __init__(self, stub: hpb_grpc.HistoryStub, metadata: tuple[tuple[str, str], ...],
                 ended: Callable[[str, float], None]) -> None:
        self._call: aio.StreamStreamCall = stub.AppendStream(metadata=metadata)  # type: ignore[call-arg, type-arg, assignment]
        self._pending: dict[int, asyncio.Future[hpb.AppendBatchResponse]] = {}
        self._next_id = 0
        self._write_lock = asyncio.Lock()
        self._ended = ended
        self._started = time.perf_counter()
        self.broken = False
        self._reader = asyncio.create_task(self._read())

    async def call(self, request: hpb.AppendBatchRequest, timeout_s: float) -> hpb.AppendBatchResponse:
        if self.broken:
            raise _StreamFailed("UNAVAILABLE")
        self._next_id += 1
        request.id = self._next_id
        fut: asyncio.Future[hpb.AppendBatchResponse] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = fut
        try:
            async with asyncio.timeout(timeout_s):
                async with self._write_lock:
                    await self._call.write(request)
                return await fut
        except TimeoutError:
            self._break("DEADLINE_EXCEEDED")  # a stalled node: stop using this stream
            raise _StreamFailed("DEADLINE_EXCEEDED") from None
        except aio.AioRpcError as e:  # the write found the call ended; the reader reports it
            self._break(e.code().name)
            raise _StreamFailed(e.code().name) from e
        except asyncio.InvalidStateError:  # written after the call ended
            self._break("UNAVAILABLE")
            raise _StreamFailed("UNAVAILABLE") from None
        finally:
            self._pending.pop(request.id, None)

    async def _read(self) -> None:
        code = "OK"
        try:
            while True:
                response: Any = await self._call.read()
                if response is EOF:
                    code = "UNAVAILABLE"  # the node ended the stream (stopping)
                    return
                fut = self._pending.get(response.id)
                if fut is not None and not fut.done():
                    fut.set_result(response)
        except aio.AioRpcError as e:
            code = e.code().name
        except Exception:  # not a status: end the stream all the same, its batches go elsewhere
            log.exception("history_append_stream_read_failed")
            code = "UNKNOWN"
        finally:
            self._break(code)

    def _break(self, code: str) -> None:
        if self.broken:
            return
        self.broken = True
        self._ended(code, self._started)
        error: _StreamFailed = (_StreamUnimplemented(code) if code == "UNIMPLEMENTED"
                                else _StreamFailed(code))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._call.cancel()

    async def aclose(self) -> None:
        self._break("CANCELLED")
        await cancel_and_wait(self._reader)
