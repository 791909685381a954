"""gRPC plumbing shared by every tier: the service credential, channels and health."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from services.common.telemetry import GrpcMetrics, split_method

AUTH_HEADER = "authorization"

# Keepalive so that a dead peer (kill -9, cut network) is noticed within seconds on idle streams.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


def credential_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {token}"),)


class ServiceTokenInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Rejects calls without the shared service credential (health checks are exempt)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}"

        async def deny(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad service credential")

        async def deny_stream(request_iter: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or bad service credential")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTH_HEADER and value == self._expected:
                return await continuation(handler_call_details)
        return self._deny_stream if method.endswith("/Connect") else self._deny_unary


def code_name(code: object) -> str:
    """A status code as its name ('OK', 'UNAVAILABLE'), whatever form grpc hands it in."""
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


Done = Callable[[str, str, str, float], None]


def _timed(behavior: Any, service: str, method: str, done: Done) -> Any:
    """Wrap a server behavior (coroutine or async generator) to report its status and time."""

    def finish(start: float, context: Any, failure: BaseException | None) -> None:
        if isinstance(failure, asyncio.CancelledError):
            code = "CANCELLED"
        elif failure is not None and not isinstance(failure, aio.AbortError):
            code = "UNKNOWN"  # an unhandled exception: grpc answers UNKNOWN
        else:
            code = code_name(context.code())
        done(service, method, code, time.perf_counter() - start)

    if inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            start, failure = time.perf_counter(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                failure = e
                raise
            finally:
                finish(start, context, failure)
        return stream

    async def call(request: Any, context: Any) -> Any:
        start, failure = time.perf_counter(), None
        try:
            return await behavior(request, context)
        except BaseException as e:
            failure = e
            raise
        finally:
            finish(start, context, failure)
    return call


def _instrumented(handler: grpc.RpcMethodHandler[Any, Any], full_method: str,
                  done: Done) -> grpc.RpcMethodHandler[Any, Any]:
    service, method = split_method(full_method)
    ser = {"request_deserializer": handler.request_deserializer,
           "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _timed(handler.unary_unary, service, method, done), **ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _timed(handler.unary_stream, service, method, done), **ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _timed(handler.stream_unary, service, method, done), **ser)
    return grpc.stream_stream_rpc_method_handler(
        _timed(handler.stream_stream, service, method, done), **ser)


class MetricsServerInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every call the server answers (grpc_server_*), streams when they end.
    Placed first, so that calls refused by the credential check are counted too."""

    MAX_CACHED = 256

    def __init__(self, metrics: GrpcMetrics) -> None:
        self._done: Done = metrics.server_done
        # method -> (handler, instrumented handler): wrap each handler once, not per call
        self._cache: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED (not a label value)
            return handler
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _instrumented(handler, method, self._done)
        if len(self._cache) < self.MAX_CACHED:
            self._cache[method] = (handler, wrapped)
        return wrapped


class MetricsClientInterceptor(aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Counts and times unary calls made on a channel (grpc_client_*). Streams are timed by
    their owner (the edge's router link), so that their read()/write() stay untouched."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self._done: Done = metrics.client_done

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:
        service, method = split_method(client_call_details.method)
        start = time.perf_counter()
        call = None
        try:
            call = await continuation(client_call_details, request)
            code = code_name(await call.code())
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()  # the caller gave up (its own timeout): end the RPC now
            self._done(service, method, "CANCELLED", time.perf_counter() - start)
            raise
        self._done(service, method, code, time.perf_counter() - start)
        return call  # done: awaiting it gives the response or raises its AioRpcError


def insecure_channel(address: str, metrics: GrpcMetrics | None = None) -> aio.Channel:
    interceptors: Any = [MetricsClientInterceptor(metrics)] if metrics is not None else None
    return aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)


def new_server(token: str, metrics: GrpcMetrics | None = None) -> aio.Server:
    interceptors: list[aio.ServerInterceptor] = [ServiceTokenInterceptor(token)]  # type: ignore[type-arg]
    if metrics is not None:
        interceptors.insert(0, MetricsServerInterceptor(metrics))
    return aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
