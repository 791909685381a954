"""What the bench parent and its worker processes say to each other over a pipe (pickled dataclasses).

The parent sends one command and waits, with a timeout, for the matching reply from every worker.
A step is a two-part exchange: `Step`/`StreamStep` → `Sent`, then `Expect` → `StepStats`, because
only the parent knows how many deliveries each worker should see (it sums what every publisher sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.bench.histogram import Histogram


@dataclass(frozen=True)
class ClientSpec:
    cid: int
    url: str  # ws://host:port/ws/chat/{session}
    session: str
    token: str
    publisher: int = -1  # the publisher number this client sends as, or -1


@dataclass(frozen=True)
class WorkerConfig:
    wid: int
    clients: list[ClientSpec]
    pad: int
    max_seconds: float
    publish_urls: list[str] = field(default_factory=list)  # http://host:port of the edges
    publish_token: str = ""


# ---- commands (parent → worker) ---------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    timeout_s: float
    concurrency: int


@dataclass(frozen=True)
class Step:
    """Publish chat_message at an open-loop total `rate` for `duration_s` from t0 (monotonic ns)."""

    k: int
    rate: float
    t0_ns: int
    duration_s: float
    publishers: int


@dataclass(frozen=True)
class StreamStep:
    """Publish chat_message_chunk into `session` over HTTP: `lanes` sequential publishers in all,
    of which this worker runs lanes lane_first..lane_first+lane_count-1."""

    k: int
    rate: float
    t0_ns: int
    duration_s: float
    session: str
    lanes: int
    lane_first: int
    lane_count: int
    per_request: int = 1  # chunks due at once leave in one request (a batch), up to this many


@dataclass(frozen=True)
class Expect:
    expected: int
    deadline_ns: int


@dataclass(frozen=True)
class Quiesce:
    max_s: float
    quiet_s: float


@dataclass(frozen=True)
class Hold:
    """Keep the connections for hold_s, each sending a heartbeat every interval_s."""

    hold_s: float
    interval_s: float


@dataclass(frozen=True)
class Storm:
    specs: list[ClientSpec]
    timeout_s: float
    concurrency: int


@dataclass(frozen=True)
class StatusQuery:
    pass


@dataclass(frozen=True)
class Close:
    pass


Command = Connect | Step | StreamStep | Expect | Quiesce | Hold | Storm | StatusQuery | Close


# ---- replies (worker → parent) ----------------------------------------------------------------


@dataclass
class Connected:
    wid: int
    ok: int
    failed: int
    times: Histogram
    errors: dict[str, int]
    first_start_ns: int
    last_ready_ns: int


@dataclass
class Sent:
    wid: int
    sent: dict[int, int]  # publisher → messages accepted for delivery
    skipped: int  # messages not sent because the publisher's connection was down
    errors: dict[str, int]
    lag: Histogram  # how late each send was against the open-loop schedule
    send_end_ns: int
    receivers: list[int]  # cids connected when the step started
    acks: Histogram = field(default_factory=Histogram)  # HTTP publish: request to response


@dataclass
class StepStats:
    wid: int
    received: int
    duplicates: int
    out_of_order: dict[int, int]  # publisher → deliveries whose `s` went backwards
    offset_duplicates: int  # an event offset seen twice on one connection
    offset_out_of_order: int  # an event offset lower than the last one on that connection
    stale: int  # deliveries of earlier steps
    latency: Histogram
    drops: int
    events: dict[str, int]
    recv_done_ns: int
    loop_lag: Histogram  # how late the worker's event loop ran a timer set every 10 ms


@dataclass
class Quiet:
    wid: int
    stale: int
    reconnected: int
    reconnect_failed: int


@dataclass
class Held:
    wid: int
    heartbeats_sent: int
    heartbeat_replies: int
    alive: int


@dataclass
class Status:
    wid: int
    connected: int
    drops_total: int
    cpu_s: float
    events_total: dict[str, int]


@dataclass
class Closed:
    wid: int


@dataclass
class Failed:
    wid: int
    error: str


Reply = Connected | Sent | StepStats | Quiet | Held | Status | Closed | Failed
