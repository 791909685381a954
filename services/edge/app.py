"""The edge: Starlette app factory, lifespan, WebSocket endpoints and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from services.common import wire
from services.common.auth import AuthError, Principal, TokenVerifier, mint_token, normalize_channel, valid_id
from services.common.close_codes import CloseCode
from services.common.history_client import HistoryCallError, HistoryClient
from services.common.membership import LINK_ROLE, LeaseKeeper, MemberWatcher
from services.common.process import settle_heap
from services.common.settings import Settings
from services.common.store.base import MembershipStore, StoreError
from services.common.store.factory import Backend, build_membership_store, open_backend
from services.common.tasks import cancel_and_wait
from services.common.telemetry import GrpcMetrics, loop_lag_metric, new_registry
from services.edge.asgisocket import AsgiSocket
from services.edge.connection import PUBLISH_UNIT_MAX, Kind, presence_payload, serve, warm_up
from services.edge.context import EdgeContext
from services.edge.demo_agent import DemoAgent
from services.edge.domain import Event
from services.edge.errors import EdgeError
from services.edge.history_reader import HistoryReader
from services.edge.hub import Hub
from services.edge.metrics import EdgeMetrics
from services.edge.presence import PresenceTracker
from services.edge.routing_client import LinkOptions, RouterPool
from services.edge.store.factory import build_presence_store
from services.edge.wsserver import PREFIXES, ROUTES, EdgeHttpProtocol, EdgeWebSocketProtocol

log = structlog.get_logger("switchboard.edge")
MAX_PUBLISH_BODY = 256 * 1024
READY_REFRESH_S = 2.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else wire.encode(content)


def _error(status: int, code: str, message: str) -> JSONBody:
    return JSONBody({"error": message, "code": code}, status_code=status)


def server_config(settings: Settings) -> uvicorn.Config:
    """The one uvicorn configuration of an edge, whether it runs alone or beside other tiers:
    WebSockets on the edge's own protocol (wsserver.py), HTTP on Starlette."""
    return uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        http=EdgeHttpProtocol, ws=EdgeWebSocketProtocol, loop=settings.event_loop,
        ws_max_size=settings.max_frame_bytes, ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_interval_s, lifespan="on", log_config=None,
        access_log=False, timeout_graceful_shutdown=int(settings.drain_grace_s) or 1,
        proxy_headers=True,
    )


def _link_options(settings: Settings) -> LinkOptions | None:
    if settings.router_transport == "grpc":
        return None  # the Connect stream to every router, even those that offer stream links
    return LinkOptions(settings.link_max_frame_bytes, settings.link_heartbeat_s,
                       settings.link_idle_timeout_s)


def create_app(settings: Settings) -> Starlette:
    """Build the edge. Everything it holds is created in the lifespan and closed in reverse."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        registry = new_registry()
        metrics = EdgeMetrics(registry)
        grpc_metrics = GrpcMetrics(registry)
        lag = loop_lag_metric(registry)
        backend = open_backend(settings)
        members = build_membership_store(backend)
        histories = MemberWatcher(members, "history", poll_s=settings.membership_poll_s)
        history = HistoryClient(histories, service_token=settings.service_token,
                                timeout_s=settings.rpc_timeout_s, grpc_metrics=grpc_metrics)
        pool = RouterPool(settings.node_id, service_token=settings.service_token,
                          queue_max=settings.edge_link_queue_max,
                          reconnect_max_s=settings.router_reconnect_max_s,
                          publish_timeout_s=settings.publish_timeout_s,
                          grpc_metrics=grpc_metrics, link=_link_options(settings))
        reader = HistoryReader(history)  # the edge sees domain pages, not protobuf
        hub = Hub(pool, reader, metrics, pending_max=settings.edge_link_queue_max,
                  attach_timeout_s=settings.rpc_timeout_s)
        pool.register(hub)

        def routers_changed(members: dict[str, str]) -> None:
            pool.set_routers(members, routers.also_members)

        routers = MemberWatcher(members, "router", poll_s=settings.membership_poll_s,
                                on_change=routers_changed,
                                also=LINK_ROLE if pool.link is not None else None)
        lease = LeaseKeeper(members, "edge", settings.node_id, settings.advertised,
                            ttl_s=settings.lease_ttl_s, refresh_s=settings.lease_refresh_s)
        verifier = TokenVerifier(settings.jwt_secret, settings.jwt_algorithm,
                                 allow_any_session=settings.allow_any_session,
                                 cache_size=settings.jwt_cache_size)
        warm_up(settings.jwt_algorithm)
        ctx = EdgeContext(settings, routers, verifier,
                          pool, reader, hub, metrics, registry)
        metrics.watch(ctx.connections, pool.connected_count)
        ready_task: asyncio.Task[None] | None = None
        presence, agent, edges = _extras(settings, backend, members, ctx)
        try:
            lag.start()
            await histories.start()
            await routers.start()
            pool.set_routers(routers.members, routers.also_members)
            await lease.start()
            ready_task = asyncio.create_task(_refresh_ready(ctx), name="edge-ready")
            await presence.start()
            if edges is not None:
                await edges.start()
            log.info("edge_started", node_id=settings.node_id, port=settings.port)
            yield {"ctx": ctx, "edges": edges}
        finally:
            lag.close()
            ctx.draining = True
            metrics.ready.set(0)
            await cancel_and_wait(ready_task)
            await lease.aclose()
            for conn in list(ctx.connections):
                conn.close_with(CloseCode.SERVICE_RESTART)
            if agent is not None:
                await agent.aclose()
            await presence.aclose()  # before the router links close: its leaves are announced
            if edges is not None:
                await edges.aclose()
            await routers.aclose()
            await histories.aclose()
            await hub.aclose()
            await pool.aclose()
            await history.aclose()
            await backend.aclose()
            log.info("edge_stopped", node_id=settings.node_id)

    # The WebSocket routes as ASGI endpoints too: the fallback under another ASGI server.
    routes: list[Route | WebSocketRoute] = [
        WebSocketRoute(prefix + base + "{path_id}", socket_endpoint(kind))
        for prefix in PREFIXES for base, kind in ROUTES]
    routes += [
        Route("/api/v1/publish", publish, methods=["POST"]),
        Route("/api/v1/channels/{channel}/history", channel_history, methods=["GET"]),
        Route("/api/v1/stats", stats, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    routes.append(Route("/api/v1/channels/{channel}/presence", channel_presence, methods=["GET"]))
    if settings.demo:
        routes += [Route("/", demo_index, methods=["GET"]),
                   Route("/demo/config.json", demo_config, methods=["GET"]),
                   Route("/demo/{file:path}", demo_file, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def _ctx(scope_holder: Request | WebSocket) -> EdgeContext:
    ctx: EdgeContext = scope_holder.state.ctx
    return ctx


def socket_endpoint(kind: Kind) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(ws: WebSocket) -> None:
        await serve(AsgiSocket(ws), _ctx(ws), kind, ws.path_params["path_id"])
    return endpoint


def _bearer(request: Request, ctx: EdgeContext) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("missing bearer token", "missing_token")
    return ctx.verifier.verify(token.strip())


async def publish(request: Request) -> Response:
    """POST /api/v1/publish {channel, type, payload, id?, ephemeral?, priority?}: 200 {offset,
    epoch} once history holds the event (ephemeral: {delivered: true}); 401/403/400/503.
    {channel, events: [{type, payload, id?, priority?}, ...]}: 200 {channel, epoch, results: [{id,
    offset, duplicate}]} once history holds all of them, stored in order as one unit."""
    ctx = _ctx(request)
    m = ctx.metrics
    try:
        principal = _bearer(request, ctx)
    except AuthError as e:
        m.publishes.labels("http", "unauthorized").inc()
        return _error(401, e.code, str(e))
    if "publish" not in principal.scopes:
        m.publishes.labels("http", "forbidden").inc()
        return _error(403, "forbidden", "the token lacks the publish scope")
    raw = await request.body()
    if len(raw) > MAX_PUBLISH_BODY:
        return _error(413, "too_large", "body too large")
    try:
        body = orjson.loads(raw)
        req = _publish_request(body)
    except (orjson.JSONDecodeError, ValueError) as e:
        m.publishes.labels("http", "invalid").inc()
        return _error(400, "invalid", str(e))
    channel, events, ephemeral, batch = req
    try:
        with m.publish_seconds.time():
            ack = await ctx.pool.publish(channel, events[0], ephemeral=ephemeral, more=events[1:])
    except EdgeError as e:
        m.publishes.labels("http", e.code).inc(len(events))
        return _error(e.http_status, e.code, str(e))
    m.publishes.labels("http", "ok").inc(len(events))
    if batch:
        stored = [(ack.offset, ack.duplicate), *ack.more]
        return JSONBody({"channel": channel, "epoch": ack.epoch, "results": [
            {"id": ev.id, "offset": offset, "duplicate": dup}
            for ev, (offset, dup) in zip(events, stored, strict=True)]})
    event = events[0]
    if ephemeral:
        return JSONBody({"id": event.id, "delivered": True})
    return JSONBody({"id": event.id, "channel": channel, "offset": ack.offset, "epoch": ack.epoch,
                     "duplicate": ack.duplicate})


def _publish_request(body: Any) -> tuple[str, list[Event], bool, bool]:
    """(channel, events, ephemeral, batch) of a publish body: one event, or with `events` a
    batch of 1..PUBLISH_UNIT_MAX durable events stored in order, all or none."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    channel = normalize_channel(str(body.get("channel", "")))
    if channel is None:
        raise ValueError("channel must be session:ID, agent_status:USER or user:USER")
    if "events" not in body:
        event = _event(channel, body)
        return channel, [event], bool(body.get("ephemeral", event.type in wire.EPHEMERAL_TYPES)), False
    items = body["events"]
    if not isinstance(items, list) or not 1 <= len(items) <= PUBLISH_UNIT_MAX:
        raise ValueError(f"events must be a list of 1 to {PUBLISH_UNIT_MAX} events")
    if body.get("ephemeral"):
        raise ValueError("a batch is stored: publish ephemeral events one at a time")
    events = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each of events must be a JSON object")
        event = _event(channel, item)
        if event.type in wire.EPHEMERAL_TYPES or item.get("ephemeral"):
            raise ValueError(f"{event.type} is ephemeral: publish it on its own")
        events.append(event)
    return channel, events, False, True


def _event(channel: str, body: dict[str, Any]) -> Event:
    event_type = body.get("type")
    if event_type not in wire.EVENT_TYPES:
        raise ValueError(f"unknown event type: {str(event_type)[:64]}")
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object")
    event_id = body.get("id") or wire.new_id()
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 128:
        raise ValueError("id must be a string of 1 to 128 characters")
    priority = body.get("priority", wire.priority_of(event_type))
    if priority not in (1, 2, 3):
        raise ValueError("priority must be 1, 2 or 3")
    kind, _, ident = channel.partition(":")
    encoded = wire.encode_body(
        event_type, payload, event_id=event_id, channel=channel, priority=priority,
        session_id=ident if kind == "session" else None,
        user_id=ident if kind != "session" else body.get("user_id"),
    )
    return Event(id=event_id, type=event_type, body=encoded, priority=priority)


def _readable_channel(request: Request, ctx: EdgeContext) -> str | Response:
    """The path's channel when the bearer token may read it (or has the publish scope); else
    the error response (401, 400 or 403)."""
    try:
        principal = _bearer(request, ctx)
    except AuthError as e:
        return _error(401, e.code, str(e))
    channel = normalize_channel(request.path_params["channel"])
    if channel is None:
        return _error(400, "invalid_channel", "unknown channel")
    if not (principal.may_access(channel) or "publish" in principal.scopes):
        return _error(403, "forbidden", "not allowed to read this channel")
    return channel


async def channel_history(request: Request) -> Response:
    """GET /api/v1/channels/{channel}/history?since=&limit= (a token that may read the channel,
    or one with the publish scope)."""
    ctx = _ctx(request)
    channel = _readable_channel(request, ctx)
    if isinstance(channel, Response):
        return channel
    try:
        since = request.query_params.get("since")
        limit = int(request.query_params.get("limit", "100"))
        if not 1 <= limit <= ctx.settings.history_read_limit or (since is not None and int(since) < 0):
            raise ValueError
    except ValueError:
        return _error(400, "invalid", "since must be >= 0 and limit between 1 and the read limit")
    try:
        got = await ctx.history.read(channel, int(since or 0), limit=limit, latest=since is None)
    except HistoryCallError as e:
        return _error(503, e.code, str(e))
    events = b",".join(ev.frame for ev in got.events)
    head = wire.encode({"channel": channel, "epoch": got.epoch, "top_offset": got.top_offset,
                        "first_offset": got.first_offset, "complete": got.complete, "events": []})
    return JSONBody(head.replace(b'"events":[]', b'"events":[' + events + b"]", 1))


async def stats(request: Request) -> Response:
    ctx = _ctx(request)
    m = ctx.metrics

    def total(counter: Any) -> float:
        return float(sum(s.value for metric in counter.collect() for s in metric.samples
                         if s.name.endswith("_total")))

    queues = [len(s.queue) for s in ctx.connections]
    frames_in, frames_out = total(m.messages_in), float(sum(m.frames_out))
    bytes_in, bytes_out = total(m.bytes_in), float(sum(m.bytes_out))
    connected = len(ctx.connections)
    return JSONBody({
        "node_id": ctx.settings.node_id,
        "pid": os.getpid(),
        "active_connections": connected,
        "peak_connections": m.peak,
        "messages_in": frames_in, "messages_out": frames_out,
        "bytes_in": bytes_in, "bytes_out": bytes_out,
        # the names the TripSage docs use for the same numbers
        "total_messages_received": frames_in, "total_messages_sent": frames_out,
        "total_bytes_received": bytes_in, "total_bytes_sent": bytes_out,
        "message_queue_size": sum(queues),
        # sockets accepted but not (or no longer) authenticated count as authenticating
        "connections_by_status": {"connected": connected,
                                  "authenticating": max(ctx.sockets - connected, 0)},
        "send_queue_total": sum(queues), "send_queue_max": max(queues, default=0),
        "channels": len(ctx.hub.channels),
        "routers_connected": ctx.pool.connected_count(),
        "closes_by_code": {s.labels["code"]: s.value for metric in m.closes.collect()
                           for s in metric.samples if s.name.endswith("_total")},
        "uptime_s": round(time.monotonic() - ctx.started, 3),
    })


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(_ctx(request).registry), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONBody({"status": "ok"})


async def readiness(ctx: EdgeContext) -> dict[str, bool]:
    """Ready only when a router stream is up and the store answers our membership polls; never
    while draining. With `append_via = "history"` a history node must also answer its health
    check, since publishes need one; otherwise history is reported, not required: live traffic
    flows without it, and only recovery and history reads wait for it (they fail retryably).
    The first time it holds, what start-up made is frozen (process.settle_heap)."""
    routers = ctx.pool.ready()
    store = ctx.members.healthy
    history = await ctx.history.healthy(timeout_s=1.0) if routers else False
    needed = history or ctx.settings.append_via == "store"
    ready = routers and needed and store and not ctx.draining
    if ready and not ctx.settled:  # before anyone is told: a storm may follow at once
        ctx.settled = True
        settle_heap()
    return {"ready": ready, "router": routers, "history": history, "store": store,
            "draining": ctx.draining}


async def readyz(request: Request) -> Response:
    """200 when `readiness` holds, else 503; the body says which part is missing."""
    state = await readiness(_ctx(request))
    return JSONBody(state, status_code=200 if state["ready"] else 503)


async def _refresh_ready(ctx: EdgeContext) -> None:
    """Keep edge_ready equal to what /readyz would answer (owned by the lifespan)."""
    while True:
        try:
            ready = (await readiness(ctx))["ready"]
        except Exception:  # top of a task: a failed probe means not ready, and we go on
            log.exception("readiness_probe_failed")
            ready = False
        ctx.metrics.ready.set(1 if ready else 0)
        await asyncio.sleep(READY_REFRESH_S)




# ---- presence and the demo -------------------------------------------------------------------

def _extras(settings: Settings, backend: Backend, members: MembershipStore,
            ctx: EdgeContext) -> tuple[PresenceTracker, DemoAgent | None, MemberWatcher | None]:
    """The presence tracker, and in demo mode the demo agent and the edge membership watcher."""

    async def publish_ephemeral(channel: str, event: Event) -> object:
        return await ctx.pool.publish(channel, event, ephemeral=True)

    async def publish_durable(channel: str, event: Event) -> object:
        return await ctx.pool.publish(channel, event, ephemeral=False)

    ctx.presence = PresenceTracker(
        build_presence_store(backend), settings.node_id, publish_ephemeral,
        ttl_s=settings.presence_ttl_s, events=settings.presence_events,
        event_max_users=settings.presence_event_max_users,
        throttle_s=settings.presence_throttle_s, timeout_s=settings.store_timeout_s,
        flush_s=settings.presence_flush_s)
    if not settings.demo:
        return ctx.presence, None, None
    ctx.agent = DemoAgent(publish_durable, max_runs=settings.demo_agent_max_runs)
    edges = MemberWatcher(members, "edge", poll_s=settings.membership_poll_s)
    return ctx.presence, ctx.agent, edges


async def channel_presence(request: Request) -> Response:
    """GET /api/v1/channels/{channel}/presence (a token that may read the channel, or one with
    the publish scope) -> {channel, users: [{user_id, connections}], count}."""
    ctx = _ctx(request)
    channel = _readable_channel(request, ctx)
    if isinstance(channel, Response):
        return channel
    assert ctx.presence is not None
    try:
        users = await ctx.presence.users(channel)
    except (StoreError, TimeoutError) as e:
        return _error(503, "unavailable", f"presence unavailable: {e}")
    return JSONBody(presence_payload(channel, users))


def demo_root(settings: Settings) -> Path:
    return Path(settings.demo_dir) if settings.demo_dir else REPO_ROOT / "clients/typescript/dist/demo"


async def demo_index(request: Request) -> Response:
    index = demo_root(_ctx(request).settings) / "index.html"
    if not index.is_file():
        return PlainTextResponse("The demo page is not built: run `npm install && npm run build` in "
                                 "clients/typescript (scripts/dev builds it).", status_code=503)
    return FileResponse(index)


async def demo_file(request: Request) -> Response:
    root = demo_root(_ctx(request).settings).resolve()
    path = (root / request.path_params["file"]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return PlainTextResponse("Not Found", status_code=404)
    return FileResponse(path)


async def demo_config(request: Request) -> Response:
    """GET /demo/config.json?user=&session= (demo mode only): a dev token for the user, allowed
    into the session, and every live edge's base URL, this edge first."""
    ctx = _ctx(request)
    user = request.query_params.get("user") or "guest-" + secrets.token_hex(2)
    session = request.query_params.get("session") or "demo"
    if not (valid_id(user) and valid_id(session)):
        return _error(400, "invalid_id", "user and session must be 1-128 characters of [A-Za-z0-9_-]")
    edges: MemberWatcher | None = request.state.edges
    if edges is not None:
        await edges.refresh()  # a page load is rare: ask the store rather than wait for a poll
    members = dict(edges.members) if edges is not None else {}
    members[ctx.settings.node_id] = ctx.settings.advertised
    own = members.pop(ctx.settings.node_id)
    urls = [f"ws://{a}" for a in [own, *sorted(members.values())]]
    token = mint_token(ctx.settings.jwt_secret, user, sessions=[session], ttl_s=24 * 3600)
    return JSONBody({"user_id": user, "session_id": session, "token": token, "urls": urls})
