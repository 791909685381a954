"""History gRPC servicer: proto <-> domain only."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator

import grpc
import structlog
from grpc import aio
from grpc.aio import EOF  # type: ignore[attr-defined]

from services.common import wire
from services.common.errors import ErrorCode
from services.common.grpc_gen.history.v1 import history_pb2 as pb
from services.common.grpc_gen.history.v1 import history_pb2_grpc as pb_grpc
from services.common.store.base import StoreBusyError, StoreError, StoreUnavailableError
from services.common.tasks import cancel_and_wait
from services.history.metrics import HistoryMetrics
from services.history.store.base import AppendResult, NewEvent, StreamStore

MAX_EVENTS_PER_APPEND = 1_000
MAX_ID_LEN = 128
STREAM_INFLIGHT_MAX = 8  # batches of one AppendStream being stored at once
# A store failure by its code: the metric label and, on unary calls, the gRPC status (busy is
# RESOURCE_EXHAUSTED: the store is up, this node's pool was full).
_STORE_ERROR_LABEL = {ErrorCode.BUSY: "store_busy", ErrorCode.UNAVAILABLE: "store_unavailable",
                      ErrorCode.INTERNAL: "store_error"}
_STORE_ERROR_STATUS = {ErrorCode.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
                       ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
                       ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL}


def _code_of(e: StoreError) -> ErrorCode:
    """busy and unavailable are retryable; any other store failure is internal."""
    if isinstance(e, StoreBusyError):
        return ErrorCode.BUSY
    if isinstance(e, StoreUnavailableError):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL
log = structlog.get_logger("switchboard.history")


class HistoryServicer(pb_grpc.HistoryServicer):
    def __init__(self, store: StreamStore, metrics: HistoryMetrics, *, read_limit: int) -> None:
        self._store = store
        self._m = metrics
        self._read_limit = read_limit
        # Epoch candidates (used only when a channel's stream is created): a random start per
        # process, then a counter, so no append pays for a random number.
        self._epochs = itertools.count(int.from_bytes(os.urandom(4)))

    def _new_epoch(self) -> str:
        return f"{next(self._epochs) & 0xFFFFFFFF:08x}"

    @contextlib.asynccontextmanager
    async def _store_errors(self, context: aio.ServicerContext) -> AsyncIterator[None]:  # type: ignore[type-arg]
        """Store errors become gRPC status codes: unavailable and busy are retryable (busy is
        RESOURCE_EXHAUSTED: the store is up, this node's pool was full), anything else is not."""
        try:
            yield
        except StoreError as e:
            code = _code_of(e)
            self._m.errors.labels(_STORE_ERROR_LABEL[code]).inc()
            await context.abort(_STORE_ERROR_STATUS[code], str(e))

    async def Append(self, request: pb.AppendRequest, context: aio.ServicerContext) -> pb.AppendResponse:  # type: ignore[type-arg]
        invalid = _invalid(request)
        if invalid:
            self._m.errors.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, invalid)
        events = _new_events(request)
        self._m.batch_size.observe(len(events))
        try:
            async with self._store_errors(context):
                with self._m.store_op("append"):
                    result = await self._store.append(request.channel, events,
                                                      new_epoch=self._new_epoch())
        except aio.AbortError:  # the store failed: _store_errors answered with a status
            self._m.appends.labels("error").inc(len(events))
            raise
        return self._response(result)

    async def AppendBatch(self, request: pb.AppendBatchRequest, context: aio.ServicerContext) -> pb.AppendBatchResponse:  # type: ignore[type-arg]
        """Several channels in one store round trip; an invalid or failed channel gets its own
        error outcome and does not fail the others. A store that fails as a whole fails the call."""
        async with self._store_errors(context):
            return await self._append_batch(request)

    async def AppendStream(self, request_iterator: object, context: aio.ServicerContext) -> None:  # type: ignore[override, type-arg]
        """AppendBatch over one stream: up to STREAM_INFLIGHT_MAX batches are stored at once and
        each is answered (with its id) as soon as it is stored. A store failure is answered per
        append (unavailable, busy, internal): the stream outlives store outages."""
        slots = asyncio.Semaphore(STREAM_INFLIGHT_MAX)
        write_lock = asyncio.Lock()
        inflight: set[asyncio.Task[None]] = set()

        async def answer(request: pb.AppendBatchRequest) -> None:
            try:
                response = await self._append_batch_answering_errors(request)
            finally:
                slots.release()
            response.id = request.id
            try:
                async with write_lock:
                    await context.write(response)
            except Exception as e:  # the router is gone: it retries the batch (same ids)
                log.debug("append_stream_answer_lost", error=repr(e))

        try:
            while True:
                request = await context.read()
                if request is EOF:
                    break
                await slots.acquire()
                task = asyncio.create_task(answer(request))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:  # the router is done writing: answer what is in flight, then end
                await asyncio.wait(list(inflight))
        finally:
            for task in list(inflight):
                await cancel_and_wait(task)

    async def _append_batch_answering_errors(self, request: pb.AppendBatchRequest) -> pb.AppendBatchResponse:
        try:
            return await self._append_batch(request)
        except StoreError as e:
            code, message = _code_of(e), str(e)
        except Exception as e:  # never leave a batch unanswered: the router would wait its deadline
            log.exception("append_stream_failed")
            code, message = ErrorCode.INTERNAL, f"append failed: {e!r}"
        self._m.errors.labels(_STORE_ERROR_LABEL[code]).inc()
        return pb.AppendBatchResponse(results=[
            pb.AppendOutcome(error_code=code, error_message=message) for _ in request.appends])

    async def _append_batch(self, request: pb.AppendBatchRequest) -> pb.AppendBatchResponse:
        """Raises StoreError when the store call fails as a whole."""
        outcomes = [pb.AppendOutcome() for _ in request.appends]
        valid: list[tuple[int, list[NewEvent]]] = []
        for i, append in enumerate(request.appends):
            invalid = _invalid(append)
            if invalid:
                self._m.errors.labels("invalid").inc()
                outcomes[i].error_code, outcomes[i].error_message = ErrorCode.INVALID, invalid
            else:
                valid.append((i, _new_events(append)))
        if not valid:
            return pb.AppendBatchResponse(results=outcomes)
        self._m.batch_size.observe(sum(len(events) for _, events in valid))
        try:
            with self._m.store_op("append"):
                results = await self._store.append_many(
                    [(request.appends[i].channel, events) for i, events in valid],
                    new_epoch=self._new_epoch())
        except StoreError:
            self._m.appends.labels("error").inc(sum(len(events) for _, events in valid))
            raise
        for (i, events), result in zip(valid, results, strict=True):
            if isinstance(result, StoreError):
                self._m.errors.labels("store_error").inc()
                self._m.appends.labels("error").inc(len(events))
                outcomes[i].error_code = _code_of(result)
                outcomes[i].error_message = str(result)
            else:
                outcomes[i].response.CopyFrom(self._response(result))
        return pb.AppendBatchResponse(results=outcomes)

    def _response(self, result: AppendResult) -> pb.AppendResponse:
        dups = sum(result.duplicates)
        self._m.appends_ok.inc(len(result.offsets) - dups)
        if dups:
            self._m.appends_duplicate.inc(dups)
        if result.trimmed:
            self._m.trimmed.inc(result.trimmed)
        return pb.AppendResponse(
            epoch=result.epoch,
            results=[pb.Appended(offset=o, duplicate=d)
                     for o, d in zip(result.offsets, result.duplicates, strict=True)],
        )

    async def Read(self, request: pb.ReadRequest, context: aio.ServicerContext) -> pb.ReadResponse:  # type: ignore[type-arg]
        limit = min(request.limit or self._read_limit, self._read_limit)
        start = time.perf_counter()
        async with self._store_errors(context):
            with self._m.store_op("read"):
                got = await self._store.read(request.channel, request.since_offset, limit,
                                             latest=request.latest)
        epoch_changed = bool(request.epoch) and request.epoch != got.epoch
        # Complete: nothing between since_offset and the first returned event was trimmed away.
        covered = got.first_offset == 0 and request.since_offset >= got.top_offset
        covered = covered or (got.first_offset != 0 and request.since_offset + 1 >= got.first_offset)
        complete = not epoch_changed and (covered or request.latest)
        response = pb.ReadResponse(
            epoch=got.epoch,
            top_offset=got.top_offset,
            first_offset=got.first_offset,
            epoch_changed=epoch_changed,
            complete=complete,
            events=[pb.StoredEvent(offset=e.offset, frame=wire.seal(e.body, e.offset, got.epoch),
                                   priority=e.priority) for e in got.events],
        )
        self._m.read_seconds.observe(time.perf_counter() - start)
        return response


def _invalid(request: pb.AppendRequest) -> str:
    """Why an append cannot be stored, or "" when it can."""
    if not request.channel or not request.events or len(request.events) > MAX_EVENTS_PER_APPEND:
        return "channel and 1..1000 events required"
    for ev in request.events:
        if not ev.id or len(ev.id) > MAX_ID_LEN or not wire.valid_body(ev.body):
            return "each event needs an id and a JSON object body"
    return ""


def _new_events(request: pb.AppendRequest) -> list[NewEvent]:
    return [NewEvent(ev.id, ev.body, ev.priority or 1) for ev in request.events]
