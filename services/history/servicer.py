"""History gRPC servicer: proto <-> domain only."""

from __future__ import annotations

import asyncio
import contextlib
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
from services.common.store.base import StoreError
from services.common.tasks import cancel_and_wait
from services.history.metrics import HistoryMetrics
from services.history.store.base import StreamStore
from services.history.writer import STORE_ERROR_LABEL, StreamWriter, code_of, invalid

STREAM_INFLIGHT_MAX = 8  # batches of one AppendStream being stored at once
# On unary calls a store failure is a gRPC status (busy is RESOURCE_EXHAUSTED: the store is up,
# this node's pool was full).
_STORE_ERROR_STATUS = {ErrorCode.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
                       ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
                       ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL}
log = structlog.get_logger("switchboard.history")


class HistoryServicer(pb_grpc.HistoryServicer):
    def __init__(self, store: StreamStore, metrics: HistoryMetrics, *, read_limit: int) -> None:
        self._store = store
        self._m = metrics
        self._read_limit = read_limit
        self._writer = StreamWriter(store, metrics)

    @contextlib.asynccontextmanager
    async def _store_errors(self, context: aio.ServicerContext) -> AsyncIterator[None]:  # type: ignore[type-arg]
        """Store errors become gRPC status codes: unavailable and busy are retryable (busy is
        RESOURCE_EXHAUSTED: the store is up, this node's pool was full), anything else is not."""
        try:
            yield
        except StoreError as e:
            code = code_of(e)
            self._m.errors.labels(STORE_ERROR_LABEL[code]).inc()
            await context.abort(_STORE_ERROR_STATUS[code], str(e))

    async def Append(self, request: pb.AppendRequest, context: aio.ServicerContext) -> pb.AppendResponse:  # type: ignore[type-arg]
        why = invalid(request)
        if why:
            self._m.errors.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
        async with self._store_errors(context):
            return await self._writer.append(request)

    async def AppendBatch(self, request: pb.AppendBatchRequest, context: aio.ServicerContext) -> pb.AppendBatchResponse:  # type: ignore[type-arg]
        """Several channels in one store round trip; an invalid or failed channel gets its own
        error outcome and does not fail the others. A store that fails as a whole fails the call."""
        async with self._store_errors(context):
            return await self._writer.append_batch(request)

    async def AppendStream(self, request_iterator: object, context: aio.ServicerContext) -> None:  # type: ignore[override, type-arg]
        """AppendBatch over one stream: up to STREAM_INFLIGHT_MAX batches are stored at once and
        each is answered (with its id) as soon as it is stored. A store failure is answered per
        append (unavailable, busy, internal): the stream outlives store outages."""
        slots = asyncio.Semaphore(STREAM_INFLIGHT_MAX)
        write_lock = asyncio.Lock()
        inflight: set[asyncio.Task[None]] = set()

        async def answer(request: pb.AppendBatchRequest) -> None:
            try:
                response = await self._writer.append_batch_answering_errors(request)
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

