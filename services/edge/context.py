"""What the edge's lifespan builds and every connection and route shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from services.common.auth import TokenVerifier
from services.common.membership import MemberWatcher
from services.common.settings import Settings
from services.edge.history_reader import HistoryReader
from services.edge.hub import Hub
from services.edge.metrics import EdgeMetrics
from services.edge.routing_client import RouterPool

if TYPE_CHECKING:
    from services.edge.connection import Connection
    from services.edge.demo_agent import DemoAgent
    from services.edge.presence import PresenceTracker


@dataclass
class EdgeContext:
    settings: Settings
    members: MemberWatcher
    verifier: TokenVerifier
    pool: RouterPool
    history: HistoryReader
    hub: Hub
    metrics: EdgeMetrics
    registry: CollectorRegistry
    connections: set[Connection] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    draining: bool = False
    settled: bool = False  # the heap was frozen once the edge first was ready (process.settle_heap)
    sockets: int = 0  # WebSockets open, authenticated or not (stats)
    presence: PresenceTracker | None = None
    agent: DemoAgent | None = None  # only in demo mode
