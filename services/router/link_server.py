"""The router's listener for edge stream links: the Connect stream without gRPC.

Each connection carries length-prefixed protobuf frames (services/common/framing.py):
`EdgeMessage`s up, `RouterMessage`s down, batched as on the Connect stream and served by the same
`RouterServicer.serve_edge`. The first frame must be the edge's `Hello` with the service token,
within `link_idle_timeout_s`; a missing or malformed hello, or a wrong token (compared in
constant time, never logged), closes the connection and is counted in
`router_edge_links_refused_total{reason}`.

Every session is an owned task. `stop(grace_s)` stops listening, asks every session to end (its
queue is flushed, then the socket is closed, as when an edge is replaced), waits up to
`grace_s`, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Callable

import structlog
from google.protobuf.message import DecodeError

from services.common.framing import FrameProtocol, FrameSink, LinkClosedError
from services.common.grpc_gen.routing.v1 import routing_pb2 as pb
from services.common.settings import Settings
from services.common.tasks import cancel_and_wait
from services.router.links import EdgeLink
from services.router.metrics import RouterMetrics
from services.router.servicer import RouterServicer

log = structlog.get_logger("switchboard.router")

HEARTBEAT = pb.RouterMessage(batch=pb.RouterBatch()).SerializeToString()


class LinkServer:
    def __init__(self, servicer: RouterServicer, metrics: RouterMetrics, settings: Settings) -> None:
        self._servicer = servicer
        self._m = metrics
        self._token = settings.service_token.encode()
        self._settings = settings
        self._server: asyncio.Server | None = None
        # each session's task -> its connection and, once the hello is accepted, its edge
        self._sessions: dict[asyncio.Task[None], tuple[FrameProtocol, EdgeLink | None]] = {}
        self._stopping = False
        self.port = 0

    async def start(self) -> int:
        """Listen on `host:link_port` (0: a free port); returns the bound port."""
        s = self._settings
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, s.host, s.link_port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("link_listener_started", port=self.port)
        return self.port

    def _protocol(self) -> FrameProtocol:
        s = self._settings
        return FrameProtocol(max_frame_bytes=s.link_max_frame_bytes, heartbeat=HEARTBEAT,
                             heartbeat_s=s.link_heartbeat_s, idle_timeout_s=s.link_idle_timeout_s,
                             on_open=self._opened)

    def _opened(self, conn: FrameProtocol) -> None:
        task = asyncio.create_task(self._session(conn), name="edge-link")
        self._sessions[task] = (conn, None)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._sessions.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("edge_link_failed", error=repr(task.exception()))

    async def _session(self, conn: FrameProtocol) -> None:
        try:
            hello, rest = await self._hello(conn)
            if hello is None:
                return
            link = self._servicer.new_link(hello.edge_id)
            task = asyncio.current_task()
            assert task is not None
            self._sessions[task] = (conn, link)

            async def read(on_messages: Callable[[list[pb.EdgeMessage]], None]) -> None:
                if rest:
                    on_messages([pb.EdgeMessage.FromString(f) for f in rest])
                # From data_received: an attach is answered in the loop iteration that read it.
                await conn.serve(lambda frames: on_messages([pb.EdgeMessage.FromString(f) for f in frames]))

            await self._servicer.serve_edge(link, read, FrameSink(conn))
        except (LinkClosedError, TimeoutError, DecodeError) as e:
            log.info("edge_link_lost", peer=conn.peer, error=str(e))
        finally:
            conn.close()

    async def _hello(self, conn: FrameProtocol) -> tuple[pb.Hello | None, list[bytes]]:
        """The edge's hello and the frames that came with it; (None, []) when it is refused."""
        try:
            async with asyncio.timeout(conn.idle_timeout_s):
                frames = await conn.read_frames()
            first = pb.EdgeMessage.FromString(frames[0]) if frames else None
        except (LinkClosedError, TimeoutError, DecodeError):
            first = None
        if first is None or not first.HasField("hello") or not first.hello.edge_id:
            self._refuse(conn, "hello")
            return None, []
        if not hmac.compare_digest(first.hello.token.encode(), self._token):
            self._refuse(conn, "token")
            return None, []
        return first.hello, frames[1:]

    def _refuse(self, conn: FrameProtocol, reason: str) -> None:
        if self._stopping:  # aborted by stop() before its hello: not the edge's fault
            return
        self._m.links_refused.labels(reason).inc()
        log.warning("edge_link_refused", peer=conn.peer, reason=reason)
        conn.abort()

    async def stop(self, grace_s: float) -> None:
        """Stop listening and end every session: flushed and closed within `grace_s`, else cancelled."""
        server, self._server = self._server, None
        self._stopping = True
        if server is not None:
            server.close()
        for conn, link in self._sessions.values():
            if link is None:
                conn.abort()  # no hello yet: nothing to flush
            else:
                link.close()  # its writer sends what is queued, then the session ends
        tasks = list(self._sessions)
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            await cancel_and_wait(task)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await server.wait_closed()
