"""The one write path into the history streams: validate, append with the store's Lua script,
count, answer per channel.

Two callers share it: history's Append RPCs, and the owning router itself when it appends
directly (`append_via = "store"`, the default: a durable publish then crosses no history hop).
Either way the store's script is the ordering point: it assigns offsets atomically and keeps
the idempotency window, and the router's pipeline keeps one append in flight per channel.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import structlog

from services.common import wire
from services.common.errors import ErrorCode
from services.common.grpc_gen.history.v1 import history_pb2 as pb
from services.common.store.base import StoreBusyError, StoreError, StoreUnavailableError
from services.history.metrics import HistoryMetrics
from services.history.store.base import AppendResult, NewEvent, StreamStore

MAX_EVENTS_PER_APPEND = 1_000
MAX_ID_LEN = 128
# A store failure by its code: the metric label (busy: the store is up, this node's pool was full).
STORE_ERROR_LABEL = {ErrorCode.BUSY: "store_busy", ErrorCode.UNAVAILABLE: "store_unavailable",
                     ErrorCode.INTERNAL: "store_error"}
log = structlog.get_logger("switchboard.history")
# One append's answer: its response, or why it failed as (code, message).
Appended = pb.AppendResponse | tuple[ErrorCode, str]


def code_of(e: StoreError) -> ErrorCode:
    """busy and unavailable are retryable; any other store failure is internal."""
    if isinstance(e, StoreBusyError):
        return ErrorCode.BUSY
    if isinstance(e, StoreUnavailableError):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.INTERNAL


class StreamWriter:
    def __init__(self, store: StreamStore, metrics: HistoryMetrics) -> None:
        self._store = store
        self._m = metrics
        # Epoch candidates (used only when a channel's stream is created): a random start per
        # process, then a counter, so no append pays for a random number.
        self._epochs = itertools.count(int.from_bytes(os.urandom(4)))

    def new_epoch(self) -> str:
        return f"{next(self._epochs) & 0xFFFFFFFF:08x}"

    async def append(self, request: pb.AppendRequest) -> pb.AppendResponse:
        """One channel, already validated (`invalid`). Raises StoreError."""
        events = _new_events(request.events)
        self._m.batch_size.observe(len(events))
        try:
            with self._m.store_op("append"):
                result = await self._store.append(request.channel, events, new_epoch=self.new_epoch())
        except StoreError:
            self._m.appends.labels("error").inc(len(events))
            raise
        return self._response(result)

    async def append_batch(self, request: pb.AppendBatchRequest) -> pb.AppendBatchResponse:
        """Several channels in one store round trip; an invalid or failed channel gets its own
        error outcome and does not fail the others. Raises StoreError when the store call fails
        as a whole."""
        return _batch_response(await self._append_many(_appends_of(request)))

    async def append_batch_answering_errors(self, request: pb.AppendBatchRequest) -> pb.AppendBatchResponse:
        """`append_batch` that never raises: a failure is answered on every append of the batch
        (unavailable, busy, internal), so the caller never waits for its deadline."""
        return _batch_response(await self.append_many(_appends_of(request)))

    async def append_many(self, appends: Sequence[tuple[str, Sequence[pb.Event]]]) -> list[Appended]:
        """`append_batch_answering_errors` without the request and response messages (the owning
        router's own appends): per append, its response or its failure as (code, message)."""
        try:
            return await self._append_many(appends)
        except StoreError as e:
            code, message = code_of(e), str(e)
        except Exception as e:
            log.exception("append_batch_failed")
            code, message = ErrorCode.INTERNAL, f"append failed: {e!r}"
        self._m.errors.labels(STORE_ERROR_LABEL[code]).inc()
        return [(code, message)] * len(appends)

    async def _append_many(self, appends: Sequence[tuple[str, Sequence[pb.Event]]]) -> list[Appended]:
        """Raises StoreError when the store call fails as a whole."""
        results: list[Appended] = [(ErrorCode.INTERNAL, "")] * len(appends)
        valid: list[tuple[int, list[NewEvent]]] = []
        for i, (channel, events) in enumerate(appends):
            why = invalid_events(channel, events)
            if why:
                self._m.errors.labels("invalid").inc()
                results[i] = (ErrorCode.INVALID, why)
            else:
                valid.append((i, _new_events(events)))
        if not valid:
            return results
        self._m.batch_size.observe(sum(len(new) for _, new in valid))
        try:
            with self._m.store_op("append"):
                stored = await self._store.append_many(
                    [(appends[i][0], new) for i, new in valid], new_epoch=self.new_epoch())
        except StoreError:
            self._m.appends.labels("error").inc(sum(len(new) for _, new in valid))
            raise
        for (i, new), result in zip(valid, stored, strict=True):
            if isinstance(result, StoreError):
                self._m.errors.labels("store_error").inc()
                self._m.appends.labels("error").inc(len(new))
                results[i] = (code_of(result), str(result))
            else:
                results[i] = self._response(result)
        return results

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


def invalid(request: pb.AppendRequest) -> str:
    """Why an append cannot be stored, or "" when it can."""
    return invalid_events(request.channel, request.events)


def invalid_events(channel: str, events: Sequence[pb.Event]) -> str:
    if not channel or not events or len(events) > MAX_EVENTS_PER_APPEND:
        return "channel and 1..1000 events required"
    for ev in events:
        if not ev.id or len(ev.id) > MAX_ID_LEN or not wire.valid_body(ev.body):
            return "each event needs an id and a JSON object body"
    return ""


def _new_events(events: Sequence[pb.Event]) -> list[NewEvent]:
    return [NewEvent(ev.id, ev.body, ev.priority or 1) for ev in events]


def _appends_of(request: pb.AppendBatchRequest) -> list[tuple[str, Sequence[pb.Event]]]:
    return [(a.channel, a.events) for a in request.appends]


def _batch_response(results: list[Appended]) -> pb.AppendBatchResponse:
    return pb.AppendBatchResponse(results=[_outcome(r) for r in results])


def _outcome(result: Appended) -> pb.AppendOutcome:
    if isinstance(result, pb.AppendResponse):
        return pb.AppendOutcome(response=result)
    code, message = result
    return pb.AppendOutcome(error_code=code, error_message=message)
