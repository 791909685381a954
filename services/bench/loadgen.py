"""A load worker process: picows WebSocket clients on uvloop, driven over a pipe by the parent.

picows, uvloop (and httpx for the stream scenario) are imported here only, inside the worker, so
the `switchboard` package does not need the `bench` dependency group to run.

Every client speaks the browser wire protocol: `{token, session_id}` first, ready on the auth reply
with `success: true`. Published messages carry `{"s": seq, "t": send time (CLOCK_MONOTONIC ns),
"p": publisher, "k": step}` as `payload.attachments[0]`; the clock is the machine's, shared by all
workers, so latency is receive time minus `t`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

import orjson

from services.bench.histogram import Histogram
from services.bench.protocol import (
    ClientSpec,
    Close,
    Closed,
    Command,
    Connect,
    Connected,
    Expect,
    Failed,
    Held,
    Hold,
    Quiesce,
    Quiet,
    Reply,
    Sent,
    Status,
    StatusQuery,
    Step,
    StepStats,
    Storm,
    StreamStep,
    WorkerConfig,
)
from services.common.telemetry import LoopLag

if TYPE_CHECKING:
    from picows import WSFrame, WSTransport

monotonic_ns = time.monotonic_ns
DATA_TYPES = frozenset({"chat_message", "chat_message_chunk"})
# A worker's own loop lag is sampled this often: a late loop delays every frame it reads, so
# the latency it measures includes that wait.
LOOP_LAG_INTERVAL_S = 0.01


def worker_main(conn: Connection, cfg: WorkerConfig) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us by pid
    _raise_fd_limit(len(cfg.clients) + 256)
    try:
        uvloop.run(Worker(conn, cfg).run())
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(Failed(cfg.wid, traceback.format_exc()[-3000:]))
    finally:
        os._exit(0)


def _raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _make_client_class() -> type[Any]:
    from picows import WSListener, WSMsgType

    loads = orjson.loads
    text, close = WSMsgType.TEXT, WSMsgType.CLOSE

    class BenchClient(WSListener):
        def __init__(self, worker: Worker, spec: ClientSpec) -> None:
            super().__init__()
            self.worker = worker
            self.spec = spec
            self.transport: WSTransport | None = None
            self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.connected = False
            self.dropped = False
            self.last_offset = -1
            self.seen: dict[int, bytearray] = {}
            self.last_s: dict[int, int] = {}

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport
            transport.send(text, orjson.dumps({"token": self.spec.token, "session_id": self.spec.session}))

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is text:
                now = monotonic_ns()
                m = loads(frame.get_payload_as_memoryview())
                kind = m.get("type")
                if kind in DATA_TYPES:
                    self.worker.deliver(self, m, now)
                elif kind == "connection_heartbeat":
                    self.worker.heartbeat_replies += 1
                elif kind is None and "success" in m:
                    self._auth_reply(m)
                else:
                    self.worker.note(str(kind) if kind not in ("error", "connection_error")
                                     else f"{kind}:{(m.get('payload') or {}).get('code')}")
            elif frame.msg_type is close:
                self.worker.note(f"close:{frame.get_close_code().value}")
                transport.disconnect()

        def _auth_reply(self, m: dict[str, Any]) -> None:
            if self.ready.done():
                return
            if m["success"]:
                self.connected = True
                self.ready.set_result(None)
            else:
                self.ready.set_exception(RuntimeError(f"auth refused: {m.get('code')}"))

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError("disconnected before the auth reply"))
            if self.connected:
                self.connected = False
                self.dropped = True
                self.worker.drops += 1

        def send(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.send(text, data)

        def close(self) -> None:
            if self.transport is not None and self.connected:
                self.connected = False
                self.transport.send_close()
                self.transport.disconnect()

    return BenchClient


class Worker:
    def __init__(self, conn: Connection, cfg: WorkerConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.wid = cfg.wid
        self.content = "x" * cfg.pad
        self.clients: dict[int, Any] = {}
        self.publishers: dict[int, Any] = {}
        self.client_class: type[Any] = type(None)
        self.step_k = -1
        self.drops_total_base = 0
        self.drops = 0
        self.heartbeat_replies = 0
        self.events_total: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self.latency = Histogram()
        self.loop_lag = Histogram()  # how late this worker's loop ran its timer, in the step
        self.received = self.duplicates = self.stale = 0
        self.offset_duplicates = self.offset_out_of_order = 0
        self.out_of_order: dict[int, int] = {}
        self.events: dict[str, int] = {}
        self.drops_total_base += self.drops
        self.drops = 0
        self.expected = -1  # set by Expect: the step is complete when this many arrived
        self.all_received = asyncio.Event()

    # ---- hot path ----------------------------------------------------------------------------

    def deliver(self, c: Any, m: dict[str, Any], now: int) -> None:
        off = m.get("offset")
        if off is not None:
            if off == c.last_offset:
                self.offset_duplicates += 1
            elif off < c.last_offset:
                self.offset_out_of_order += 1
            else:
                c.last_offset = off
        try:
            data = m["payload"]["attachments"][0]
            k, p, s, t = data["k"], data["p"], data["s"], data["t"]
        except (KeyError, IndexError, TypeError):
            self.note(f"foreign:{m.get('type')}")
            return
        if k != self.step_k:
            self.stale += 1
            return
        seen = c.seen.get(p)
        if seen is None:
            seen = c.seen[p] = bytearray(max(1024, s + 1))
        elif s >= len(seen):
            seen.extend(bytes(s + 1024 - len(seen)))
        if seen[s]:
            self.duplicates += 1
            return
        seen[s] = 1
        self.received += 1
        if self.received == self.expected:
            self.all_received.set()
        self.latency.record((now - t) // 1000)
        if s < c.last_s.get(p, -1):
            self.out_of_order[p] = self.out_of_order.get(p, 0) + 1
        else:
            c.last_s[p] = s

    def note(self, kind: str) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1
        self.events_total[kind] = self.events_total.get(kind, 0) + 1

    # ---- command loop ------------------------------------------------------------------------

    async def _recv(self) -> Command | None:
        loop = asyncio.get_running_loop()
        try:
            cmd: Command = await loop.run_in_executor(None, self.conn.recv)
        except (EOFError, OSError):
            return None
        return cmd

    def _send(self, reply: Reply) -> None:
        self.conn.send(reply)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.cfg.max_seconds + 60, os._exit, 3)  # never outlive the run's budget
        self.client_class = _make_client_class()
        handlers: dict[type[Any], Callable[[Any], Awaitable[None]]] = {
            Connect: self._on_connect, Step: self._on_step, StreamStep: self._on_stream,
            Quiesce: self._on_quiesce, Hold: self._on_hold, Storm: self._on_storm,
            StatusQuery: self._on_status,
        }
        lag = LoopLag(self._lagged, LOOP_LAG_INTERVAL_S)
        lag.start()
        try:
            while (cmd := await self._recv()) is not None:
                if isinstance(cmd, Close):
                    self._close_all(self.clients.values())
                    await asyncio.sleep(0.2)
                    self._send(Closed(self.wid))
                    return
                await handlers[type(cmd)](cmd)
        finally:
            lag.close()

    def _lagged(self, seconds: float) -> None:
        self.loop_lag.record(int(seconds * 1e6))

    # ---- connecting --------------------------------------------------------------------------

    async def _on_connect(self, cmd: Connect) -> None:
        self._send(await self._connect(self.cfg.clients, cmd.timeout_s, cmd.concurrency, keep=True))

    async def _connect(self, specs: list[ClientSpec], timeout_s: float, concurrency: int,
                       *, keep: bool) -> Connected:
        from picows import ws_connect

        sem = asyncio.Semaphore(max(1, concurrency))
        times = Histogram()
        errors: dict[str, int] = {}
        first = [0]
        last = [0]
        made: list[Any] = []

        async def one(spec: ClientSpec) -> None:
            async with sem:
                t0 = monotonic_ns()
                first[0] = first[0] or t0
                transport = None
                try:
                    async with asyncio.timeout(timeout_s):
                        transport, client = await ws_connect(
                            lambda: self.client_class(self, spec), spec.url,
                            websocket_handshake_timeout=timeout_s, read_buffer_init_size=4096)
                        await cast(Any, client).ready
                except Exception as e:  # every failure is counted by kind
                    key = f"{type(e).__name__}: {e}"[:120]
                    errors[key] = errors.get(key, 0) + 1
                    if transport is not None:
                        transport.disconnect()
                    return
                t1 = monotonic_ns()
                times.record((t1 - t0) // 1000)
                last[0] = max(last[0], t1)
                made.append(client)

        await asyncio.gather(*(one(s) for s in specs))
        if keep:
            for c in made:
                self.clients[c.spec.cid] = c
                if c.spec.publisher >= 0:
                    self.publishers[c.spec.publisher] = c
        else:
            self._close_all(made)
        return Connected(self.wid, len(made), len(specs) - len(made), times, errors, first[0], last[0])

    def _close_all(self, clients: Any) -> None:
        for c in list(clients):
            with contextlib.suppress(Exception):  # closing a socket that already broke
                c.close()

    async def _on_storm(self, cmd: Storm) -> None:
        res = await self._connect(cmd.specs, cmd.timeout_s, cmd.concurrency, keep=False)
        await asyncio.sleep(0.2)  # let the closes go out before the next wave
        self._send(res)

    # ---- steps -------------------------------------------------------------------------------

    def _begin_step(self, k: int) -> list[int]:
        self._reset()
        self.step_k = k
        for c in self.clients.values():
            c.seen = {}
            c.last_s = {}
        return [cid for cid, c in self.clients.items() if c.connected]

    async def _until(self, t_ns: int) -> None:
        delay = (t_ns - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

    async def _on_step(self, cmd: Step) -> None:
        receivers = self._begin_step(cmd.k)
        mine = {p: c for p, c in self.publishers.items() if c.connected}
        seq = dict.fromkeys(mine, 0)
        total = int(cmd.rate * cmd.duration_s)
        interval = 1e9 / cmd.rate
        lag = Histogram()
        skipped = n = 0
        prefix = b'{"type":"chat_message","payload":{"content":' + orjson.dumps(self.content) + b',"attachments":['
        await self._until(cmd.t0_ns)
        while n < total:
            due = min(total, int((monotonic_ns() - cmd.t0_ns) / interval) + 1)
            while n < due:
                c = mine.get(n % cmd.publishers)
                if c is not None:
                    if c.connected:
                        p = c.spec.publisher
                        s = seq[p]
                        seq[p] = s + 1
                        ts = monotonic_ns()
                        c.send(prefix + orjson.dumps({"s": s, "t": ts, "p": p, "k": cmd.k}) + b"]}}")
                        lag.record((ts - cmd.t0_ns - int(n * interval)) // 1000)
                    else:
                        skipped += 1
                n += 1
            if n < total:
                await asyncio.sleep(0.001)
        self._send(Sent(self.wid, seq, skipped, {}, lag, monotonic_ns(), receivers))
        await self._finish_step()

    async def _on_stream(self, cmd: StreamStep) -> None:
        import httpx

        receivers = self._begin_step(cmd.k)
        lanes = range(cmd.lane_first, cmd.lane_first + cmd.lane_count)
        sent: dict[int, int] = dict.fromkeys(lanes, 0)
        errors: dict[str, int] = {}
        lag, acks = Histogram(), Histogram()
        total = int(cmd.rate * cmd.duration_s)
        interval = 1e9 / cmd.rate
        urls = self.cfg.publish_urls
        headers = {"content-type": "application/json", "authorization": f"Bearer {self.cfg.publish_token}"}
        limits = httpx.Limits(max_connections=cmd.lane_count, max_keepalive_connections=cmd.lane_count)

        async def lane(client: httpx.AsyncClient, p: int) -> None:
            """Lane p publishes chunks p, p + lanes, ... in order, each due at t0 + n / rate. A
            chunk's time stamp is when it was due (the producer made it), so the delivery latency
            includes any wait in the lane. The chunks due when a request can leave go together."""
            url = urls[p % len(urls)] + "/api/v1/publish"
            due = [cmd.t0_ns + int(n * interval) for n in range(p, total, cmd.lanes)]
            i = 0
            while i < len(due):
                await self._until(due[i])
                ts = monotonic_ns()
                lag.record((ts - due[i]) // 1000)
                j = i + 1
                while j < len(due) and j - i < cmd.per_request and due[j] <= ts:
                    j += 1
                events = [{"type": "chat_message_chunk", "payload": {
                    "content": self.content, "index": s,
                    "attachments": [{"s": s, "t": due[s] if cmd.per_request > 1 else ts, "p": p, "k": cmd.k}]}}
                    for s in range(i, j)]
                body: dict[str, Any] = ({"channel": f"session:{cmd.session}", **events[0]} if cmd.per_request == 1
                                        else {"channel": f"session:{cmd.session}", "events": events})
                try:
                    r = await client.post(url, content=orjson.dumps(body), headers=headers)
                    key = "ok" if r.status_code == 200 else f"http_{r.status_code}"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                if key == "ok":
                    sent[p] += j - i
                    acks.record((monotonic_ns() - ts) // 1000)
                else:
                    errors[key] = errors.get(key, 0) + j - i
                i = j

        async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
            # open the keep-alive connections before the clock starts
            with contextlib.suppress(httpx.HTTPError):
                await asyncio.gather(*(client.get(urls[p % len(urls)] + "/healthz") for p in lanes))
            async with asyncio.TaskGroup() as tg:
                for p in lanes:
                    tg.create_task(lane(client, p))
        self._send(Sent(self.wid, sent, 0, errors, lag, monotonic_ns(), receivers, acks))
        await self._finish_step()

    async def _finish_step(self) -> None:
        cmd = await self._recv()
        if not isinstance(cmd, Expect):
            raise RuntimeError(f"expected Expect, got {cmd!r}")
        self.expected = cmd.expected
        if self.received >= self.expected:
            self.all_received.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_received.wait(), max(0.0, (cmd.deadline_ns - monotonic_ns()) / 1e9))
        self._send(StepStats(
            self.wid, self.received, self.duplicates, self.out_of_order, self.offset_duplicates,
            self.offset_out_of_order, self.stale, self.latency, self.drops, self.events, monotonic_ns(),
            self.loop_lag))

    async def _on_quiesce(self, cmd: Quiesce) -> None:
        """Wait (bounded) until late deliveries stop, then reconnect what the servers dropped."""
        self.step_k = -1
        self.stale = 0
        deadline = monotonic_ns() + int(cmd.max_s * 1e9)
        last, last_change = self.stale, monotonic_ns()
        while monotonic_ns() < deadline and monotonic_ns() - last_change < cmd.quiet_s * 1e9:
            await asyncio.sleep(0.1)
            if self.stale != last:
                last, last_change = self.stale, monotonic_ns()
        dropped = [c.spec for c in self.clients.values() if c.dropped]
        res = await self._connect(dropped, 10.0, 50, keep=True) if dropped else None
        self._send(Quiet(self.wid, self.stale, res.ok if res else 0, res.failed if res else 0))

    async def _on_hold(self, cmd: Hold) -> None:
        end = monotonic_ns() + int(cmd.hold_s * 1e9)
        beat = b'{"type":"heartbeat"}'
        sent = 0
        self.heartbeat_replies = 0
        while monotonic_ns() < end:
            for c in self.clients.values():
                if c.connected:
                    c.send(beat)
                    sent += 1
            await asyncio.sleep(max(0.0, min(cmd.interval_s, (end - monotonic_ns()) / 1e9)))
        await asyncio.sleep(0.5)  # the replies to the last round
        alive = sum(1 for c in self.clients.values() if c.connected)
        self._send(Held(self.wid, sent, self.heartbeat_replies, alive))

    async def _on_status(self, cmd: StatusQuery) -> None:
        t = os.times()
        alive = sum(1 for c in self.clients.values() if c.connected)
        self._send(Status(self.wid, alive, self.drops_total_base + self.drops, t.user + t.system,
                          dict(self.events_total)))
