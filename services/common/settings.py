"""Settings for every tier, read from SWITCHBOARD_* environment variables.

Durations carry their unit in the name. No tier reads the environment anywhere else.
"""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "switchboard-insecure-development-secret-do-not-use-in-production"
DEV_SERVICE_TOKEN = "switchboard-insecure-development-service-token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore")

    # identity and addresses
    node_id: str = Field(default_factory=lambda: secrets.token_hex(4))
    host: str = "127.0.0.1"
    port: int = 8000
    advertise_host: str = ""  # host other tiers dial; defaults to host

    # store
    store_url: str = "memory://"
    key_prefix: str = "sb"
    store_timeout_s: float = 2.0
    store_max_connections: int = 64
    store_pool_wait_s: float = 2.0  # a call waits this long for a pooled connection, then "busy"
    store_append_pipe: bool = True  # the owning router appends over a pipelined connection of its own (redis:// only)

    # auth
    jwt_secret: str = ""
    jwt_algorithm: str = "HS256"
    jwt_cache_size: int = Field(default=10_000, ge=0)  # verified tokens remembered per edge (0: verify every time)
    allow_any_session: bool = False
    service_token: str = ""  # shared credential on internal gRPC calls
    auth_timeout_s: float = 10.0

    # membership
    lease_ttl_s: float = 5.0
    lease_refresh_s: float = 1.0
    membership_poll_s: float = 0.5

    # rpc
    rpc_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    forward_timeout_s: float = 1.0  # router -> owner; past it the forwarding router takes the publish
    router_reconnect_max_s: float = 2.0

    # history
    history_max_len: int = 10_000
    history_ttl_s: float = 24 * 3600.0
    history_meta_ttl_s: float = 7 * 24 * 3600.0
    history_read_limit: int = 1_000
    idempotency_window_s: float = 300.0

    # edge
    max_frame_bytes: int = 64 * 1024
    send_queue_max: int = Field(default=1_000, ge=2)
    client_rate_per_s: float = 100.0  # client messages per second, per connection (batch items count)
    client_burst: int = 1_000         # saved-up allowance; past it frames are refused, then 4029
    edge_link_queue_max: int = 10_000
    ping_interval_s: float = 20.0
    drain_grace_s: float = 5.0

    # presence (session channels): leases renewed every ttl/3; big sessions get summaries
    presence_events: bool = True
    presence_ttl_s: float = Field(default=10.0, gt=0)
    presence_event_max_users: int = Field(default=100, ge=0)
    presence_throttle_s: float = Field(default=1.0, gt=0)
    presence_flush_s: float = Field(default=0.05, ge=0)  # an edge writes presence changes at most this often

    # demo page and demo agent (`switchboard dev` turns them on)
    demo: bool = False
    demo_dir: str = ""  # empty: clients/typescript/dist/demo in the repository
    demo_agent_max_runs: int = Field(default=4, ge=1)

    # router
    # Where the owning router appends a channel's events: "store" with history's write path in
    # its own process (no history hop; history serves reads), "history" through a history node.
    append_via: Literal["store", "history"] = "store"
    router_link_queue_max: int = 50_000
    # edge <-> router stream links (length-prefixed protobuf over TCP; gRPC Connect is the fallback)
    link_port: int = Field(default=0, ge=-1)  # router: 0 picks a free port (advertised), -1 turns links off
    router_transport: Literal["link", "grpc"] = "link"  # edge: "grpc" forces the Connect stream
    link_heartbeat_s: float = Field(default=2.0, gt=0)  # an empty batch when nothing else was sent
    link_idle_timeout_s: float = Field(default=6.0, gt=0)  # nothing read this long: the peer is dead
    link_max_frame_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # as gRPC's message limit
    publish_batch_max: int = 256

    # every tier: uvloop where it is installed (uvicorn[standard] brings it), or asyncio's own loop
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    # telemetry
    log_json: bool = True
    log_level: str = "info"
    metrics_port: int = 0  # router/history: 0 disables the /metrics listener

    def require_secrets(self) -> None:
        """Refuse to run a tier without real credentials (only `switchboard dev` sets dev ones)."""
        if not self.jwt_secret:
            raise SystemExit("SWITCHBOARD_JWT_SECRET is not set (use `switchboard dev` for local runs)")
        if not self.service_token:
            raise SystemExit("SWITCHBOARD_SERVICE_TOKEN is not set (use `switchboard dev` for local runs)")

    @property
    def advertised(self) -> str:
        return f"{self.advertise_host or self.host}:{self.port}"
