"""Every tier in one process on the in-memory store: `switchboard dev` without redis-server.

The tiers still talk gRPC to each other over loopback, exactly as in the cluster; only the
store is the in-process back end, so nothing survives a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from services.common.process import stop_event_on_signals
from services.common.settings import DEV_JWT_SECRET, DEV_SERVICE_TOKEN, Settings
from services.common.telemetry import configure_logging
from services.devcluster import print_banner
from services.edge.app import server_config
from services.history.server import running as running_history
from services.router.server import running as running_router


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal capture: this process's stop event ends every server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _settings(node_id: str, port: int) -> Settings:
    return Settings(node_id=node_id, port=port, store_url="memory://dev",
                    jwt_secret=DEV_JWT_SECRET, service_token=DEV_SERVICE_TOKEN,
                    allow_any_session=True, log_json=False, demo=True)


async def run_single_process(edges: int, routers: int, port: int) -> int:
    configure_logging(json=False)
    stop = stop_event_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_history(_settings("history-1", 0)))
        for i in range(routers):
            await stack.enter_async_context(running_router(_settings(f"router-{i + 1}", 0)))
        servers = []
        for i in range(edges):
            s = _settings(f"edge-{i + 1}", port + i)
            servers.append(_EmbeddedServer(server_config(s)))
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        print_banner([f"ws://127.0.0.1:{port + i}" for i in range(edges)],
                     "memory://dev (in this process)", DEV_JWT_SECRET, "stderr of this process")
        await stop.wait()
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0
