"""The four scenarios of `switchboard bench`, run by the parent process.

fanout  C connections in R sessions (members alternate over the edges, so every session spans
        edges); P of them publish chat_message at an open-loop total rate M for T seconds. With
        --step the rate rises by --step-factor until a step fails, then --refine bisection steps.
idle    C connections held for --hold seconds with heartbeats: server RSS per 1,000 connections.
stream  a backend publishes chat_message_chunk into one session over HTTP at rate M for T seconds
        (--lanes sequential publishers on keep-alive connections) to C clients.
storm   waves of connect+auth, growing by --storm-factor up to C, until one fails or its connect
        p99 passes --connect-p99-limit-ms.

A step is sustained when nothing is lost, duplicated or out of order, every scheduled message was
sent on time (send lag p99 within the p99 limit) and the delivery p99 is within --p99-limit-ms.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from services.bench.histogram import Histogram
from services.bench.options import BenchOptions
from services.bench.procstats import (
    CpuSnapshot,
    ServerProcess,
    cpu_snapshot,
    machine_busy_pct,
    rss_snapshot,
    share_pct,
)
from services.bench.protocol import (
    ClientSpec,
    Connect,
    Connected,
    Expect,
    Held,
    Hold,
    Quiesce,
    Quiet,
    Sent,
    Status,
    StatusQuery,
    Step,
    StepStats,
    Storm,
    StreamStep,
    WorkerConfig,
)
from services.bench.target import Buckets, Target
from services.bench.workers import WorkerPool
from services.common.auth import mint_token

Result = dict[str, Any]
ExpectedFor = Callable[[int, dict[int, int]], int]  # (receiver cid, sent per publisher) -> deliveries


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Plan:
    """Which session, edge, worker and publisher number each connection gets (deterministic)."""

    def __init__(self, clients: int, rooms: int, edges: int, publishers: int, workers: int,
                 placement: str = "spread") -> None:
        if not 1 <= rooms <= clients:
            raise ValueError("need 1 <= rooms <= clients")
        if publishers > clients:
            raise ValueError("more publishers than clients")
        self.clients, self.rooms, self.publishers, self.workers = clients, rooms, publishers, workers
        self.room_of = [i % rooms for i in range(clients)]
        if placement == "session":  # a session's members together, sessions over the edges in turn
            self.edge_of = [room % edges for room in self.room_of]
        elif placement == "spread":  # a session's members alternate over the edges
            self.edge_of = [(i // rooms) % edges for i in range(clients)]
        else:
            raise ValueError(f"unknown placement {placement!r}")
        # Publisher j is in room r = j % rooms; the members of room r are cids r, r + rooms, ...
        # (spread: alternating over the edges). Starting at member r (not 0) spreads publishers
        # over the edges.
        sizes = [len(range(r, clients, rooms)) for r in range(rooms)]
        if publishers > rooms and -(-publishers // rooms) > min(sizes):
            raise ValueError("more publishers per session than session members")
        self.cid_of_publisher = [r + ((j // rooms + r) % sizes[r]) * rooms
                                 for j in range(publishers) for r in [j % rooms]]
        self.publisher_of = {cid: j for j, cid in enumerate(self.cid_of_publisher)}
        self.room_publishers: list[list[int]] = [[] for _ in range(rooms)]
        for j, cid in enumerate(self.cid_of_publisher):
            self.room_publishers[self.room_of[cid]].append(j)

    def worker_of(self, cid: int) -> int:
        return cid % self.workers

    def spans_edges(self) -> int:
        """Sessions whose members are on more than one edge."""
        edges: list[set[int]] = [set() for _ in range(self.rooms)]
        for cid in range(self.clients):
            edges[self.room_of[cid]].add(self.edge_of[cid])
        return sum(1 for e in edges if len(e) > 1)


class Run:
    def __init__(self, opts: BenchOptions, target: Target) -> None:
        self.o = opts
        self.t = target
        self.pool = WorkerPool()
        self.t_start = time.monotonic()
        self.run_id = secrets.token_hex(3)
        self._tokens: dict[str, str] = {}

    # ---- helpers -----------------------------------------------------------------------------

    def remaining_s(self) -> float:
        return self.o.max_seconds - (time.monotonic() - self.t_start)

    def session(self, room: int) -> str:
        return f"bench-{self.run_id}-{room}"

    def token(self, session: str) -> str:
        if session not in self._tokens:
            self._tokens[session] = mint_token(self.t.jwt_secret, "bench", sessions=[session], ttl_s=86400)
        return self._tokens[session]

    def spec(self, cid: int, room: int, edge: int, publisher: int = -1) -> ClientSpec:
        s = self.session(room)
        return ClientSpec(cid, self.t.chat_url(edge, s), s, self.token(s), publisher)

    def start_workers(self, clients: list[ClientSpec], worker_of: Callable[[int], int] | None = None) -> None:
        n = max(1, self.o.workers)
        per: list[list[ClientSpec]] = [[] for _ in range(n)]
        for c in clients:
            per[worker_of(c.cid) if worker_of else c.cid % n].append(c)
        publish_token = mint_token(self.t.jwt_secret, "bench-publisher", scopes=["publish"], ttl_s=86400)
        self.pool.start([WorkerConfig(w, per[w], self.o.pad, self.o.max_seconds, self.t.http_urls, publish_token)
                         for w in range(n)])

    def connect(self, expected: int) -> Result:
        conc = max(1, self.o.connect_concurrency // self.pool.size)
        t0 = time.monotonic()
        self.pool.broadcast(Connect(self.o.connect_timeout_s, conc))
        waves = expected / max(1, conc * self.pool.size) + 2
        res = self.pool.gather(Connected, self.o.connect_timeout_s * waves + 60)
        out = connect_summary(res)
        out["wall_s"] = round(time.monotonic() - t0, 3)
        lat = out["connect_ms"]
        errors = f" errors {out['errors']}" if out["errors"] else ""
        log(f"connected {out['established']}/{expected} in {out['wall_s']} s "
            f"(connect+auth p50 {lat['p50']} ms, p99 {lat['p99']} ms){errors}")
        return out

    def status(self) -> Result:
        self.pool.broadcast(StatusQuery())
        st = self.pool.gather(Status, 30)
        return {"workers": self.pool.size, "cpu_s": round(sum(s.cpu_s for s in st), 2),
                "connections_alive": sum(s.connected for s in st),
                "connections_dropped": sum(s.drops_total for s in st),
                "server_events": merge_counts(s.events_total for s in st)}

    def servers(self, cpu0: CpuSnapshot, cpu1: CpuSnapshot, window_s: float,
                deliveries: int | None) -> Result:
        """CPU (seconds, % of one core) over the window, the share of it each process waited for
        a CPU, and RSS now, per server process; how busy the whole machine was (its load
        generator included) and the share of the window in which anything waited for a CPU."""
        rss = rss_snapshot(self.t.processes)
        rows: list[Result] = []
        for p in self.t.processes:
            used = cpu1.processes.get(p.name, 0.0) - cpu0.processes.get(p.name, 0.0)
            rows.append({"name": p.name, "tier": p.tier, "pid": p.pid, "cpu_s": round(used, 3),
                         "cpu_pct": round(100 * used / window_s, 1) if window_s > 0 else None,
                         "wait_pct": share_pct(cpu0.waits.get(p.name), cpu1.waits.get(p.name), window_s),
                         "rss_kb": rss[p.name]})
        total = sum(float(r["cpu_s"]) for r in rows)
        return {"processes": rows, "cpu_s": round(total, 3),
                "cpu_us_per_delivery": round(1e6 * total / deliveries, 2) if deliveries else None,
                "machine_busy_pct": machine_busy_pct(cpu0, cpu1),
                "machine_cpu_pressure_pct": share_pct(cpu0.pressure_s, cpu1.pressure_s, window_s)}

    # ---- fanout ------------------------------------------------------------------------------

    def fanout(self) -> Result:
        o = self.o
        plan = Plan(o.clients, o.rooms, len(self.t.edge_urls), o.publishers, o.workers, o.placement)
        specs = [self.spec(cid, plan.room_of[cid], plan.edge_of[cid], plan.publisher_of.get(cid, -1))
                 for cid in range(plan.clients)]
        self.start_workers(specs, plan.worker_of)
        out: Result = {"connect": self.connect(plan.clients),
                       "sessions_spanning_edges": plan.spans_edges()}
        steps: list[Result] = []
        if not o.step:
            steps.append(self.fanout_step(plan, 1, o.rate))
        else:
            self.ramp(plan, steps)
        good = [s for s in steps if s["sustained"]]
        out["highest_sustained"] = max(good, key=lambda s: s["rate"])["rate"] if good else None
        if o.step and o.check_at:
            out["check"] = self.check_step(plan, steps, out["highest_sustained"])
        out["steps"] = steps
        return out

    def check_step(self, plan: Plan, steps: list[Result], highest: float | None) -> Result | None:
        """One more step at `check_at` of the highest sustained rate (appended to `steps`): its
        p99 against `check_p99_ms`. None when nothing was sustained or no time is left."""
        o = self.o
        if highest is None:
            log("no sustained step: no check step")
            return None
        if self.remaining_s() < o.duration_s + o.drain_s + 5:
            log("time budget reached: no check step")
            return None
        s = self.fanout_step(plan, len(steps) + 1, round(highest * o.check_at))
        steps.append(s)
        p99 = s["latency_ms"]["p99"]
        return {"k": s["k"], "fraction": o.check_at, "rate": s["rate"], "p99_ms": p99,
                "p99_target_ms": o.check_p99_ms, "sustained": s["sustained"],
                "met": bool(s["sustained"] and p99 is not None and p99 <= o.check_p99_ms)}

    def ramp(self, plan: Plan, steps: list[Result]) -> None:
        o = self.o
        per_step = o.duration_s + o.drain_s + 5
        rate, ok, bad = o.step_start, None, None
        for k in range(1, o.max_steps + 1):
            if self.remaining_s() < per_step:
                log("time budget reached: stopping the ramp")
                return
            s = self.fanout_step(plan, k, round(rate))
            steps.append(s)
            if s["sustained"]:
                ok, rate = s["rate"], rate * o.step_factor
            else:
                bad = s["rate"]
                # the start rate failed: halve (once per step) until one holds
                rate = rate / 2 if ok is None else rate
                if ok is not None or rate < 10:
                    break
        if ok is None or bad is None:
            return
        lo, hi = float(ok), float(bad)
        for _ in range(o.refine):
            if self.remaining_s() < per_step or hi - lo < max(10.0, lo * 0.04):
                return
            mid = round((lo + hi) / 2)
            s = self.fanout_step(plan, len(steps) + 1, mid)
            steps.append(s)
            lo, hi = (mid, hi) if s["sustained"] else (lo, mid)

    def fanout_step(self, plan: Plan, k: int, rate: float) -> Result:
        o = self.o
        t0 = time.monotonic_ns() + 300_000_000
        self.pool.broadcast(Step(k, rate, t0, o.duration_s, plan.publishers))
        time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        return self.collect_step(k, rate, expected_by_room(plan))

    def collect_step(self, k: int, rate: float, expected_for: ExpectedFor) -> Result:
        """The second half of a step: what was sent, what each worker must receive, what it got."""
        o = self.o
        cpu0, lg0, t0 = cpu_snapshot(self.t.processes), self.pool.cpu_seconds(), time.monotonic()
        lgw0 = self.pool.wait_seconds()
        hist0 = self.t.histograms()
        sent = self.pool.gather(Sent, o.duration_s + 120)
        sent_by_pub = {p: n for r in sent for p, n in r.sent.items()}
        expected = [sum(expected_for(cid, sent_by_pub) for cid in r.receivers) for r in sent]
        deadline = max(r.send_end_ns for r in sent) + int(o.drain_s * 1e9)
        for wid, n in enumerate(expected):
            self.pool.send(wid, Expect(n, deadline))
        stats = self.pool.gather(StepStats, o.drain_s + 60)
        cpu1, lg1, lgw1 = cpu_snapshot(self.t.processes), self.pool.cpu_seconds(), self.pool.wait_seconds()
        window = time.monotonic() - t0
        hist1 = self.t.histograms()
        self.pool.broadcast(Quiesce(max_s=5.0, quiet_s=0.5))
        quiet = self.pool.gather(Quiet, 80)
        s = step_summary(k, rate, o.duration_s, sent, stats, sum(expected))
        s["late_after_drain"] = sum(q.stale for q in quiet)
        s["reconnected"] = sum(q.reconnected for q in quiet)
        s["servers"] = self.servers(cpu0, cpu1, window, s["received"])
        s["loadgen_cpu_s"] = round(lg1 - lg0, 2)
        # per worker, on average: on a CPU, and waiting for one (together: how saturated it was)
        s["loadgen_cpu_pct"] = share_pct(lg0 / self.pool.size, lg1 / self.pool.size, window)
        s["loadgen_wait_pct"] = share_pct(lgw0, lgw1, window)
        s["server_loop_lag_p99_ms"] = between(hist0, hist1, "event_loop_lag_seconds")
        s["edge_delivery_p99_ms"] = between(hist0, hist1, "edge_delivery_latency_seconds")
        s["fail_reasons"] = fail_reasons(s, o.p99_limit_ms)
        s["sustained"] = not s["fail_reasons"]
        log(step_line(s))
        return s

    # ---- idle --------------------------------------------------------------------------------

    def idle(self) -> Result:
        o = self.o
        edges = len(self.t.edge_urls)
        rooms = max(1, min(o.rooms, o.clients))
        specs = [self.spec(cid, cid % rooms, (cid // rooms) % edges) for cid in range(o.clients)]
        self.start_workers(specs)
        time.sleep(1.0)
        before = rss_snapshot(self.t.processes)
        cpu0, t0 = cpu_snapshot(self.t.processes), time.monotonic()
        out: Result = {"connect": self.connect(o.clients)}
        log(f"holding {out['connect']['established']} connections for {o.hold_s} s "
            f"(heartbeat every {o.heartbeat_s} s)")
        self.pool.broadcast(Hold(o.hold_s, o.heartbeat_s))
        held = self.pool.gather(Held, o.hold_s + 60)
        after = rss_snapshot(self.t.processes)
        n = out["connect"]["established"]
        out["heartbeats_sent"] = sum(h.heartbeats_sent for h in held)
        out["heartbeat_replies"] = sum(h.heartbeat_replies for h in held)
        out["alive_after_hold"] = sum(h.alive for h in held)
        out["memory"] = memory_per_1k(self.t.processes, before, after, n)
        out["servers"] = self.servers(cpu0, cpu_snapshot(self.t.processes), time.monotonic() - t0, None)
        for tier in out["memory"]["tiers"]:
            log(f"{tier['tier']}: RSS {tier['rss_before_kb']} -> {tier['rss_after_kb']} KiB, "
                f"{tier['kb_per_1k_connections']} KiB per 1,000 connections")
        return out

    # ---- stream ------------------------------------------------------------------------------

    def stream(self) -> Result:
        o = self.o
        edges = len(self.t.edge_urls)
        specs = [self.spec(cid, 0, cid % edges) for cid in range(o.clients)]
        self.start_workers(specs)
        out: Result = {"connect": self.connect(o.clients)}
        lanes = max(1, o.lanes)
        n = self.pool.size
        t0 = time.monotonic_ns() + 1_500_000_000  # time to open the HTTP connections
        first = 0
        for wid in range(n):
            count = lanes // n + (1 if wid < lanes % n else 0)
            self.pool.send(wid, StreamStep(1, o.rate, t0, o.duration_s, self.session(0), lanes, first, count,
                                               max(1, min(32, o.chunks_per_request))))
            first += count
        time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        out["steps"] = [self.collect_step(1, o.rate, lambda cid, sent: sum(sent.values()))]
        return out

    # ---- storm -------------------------------------------------------------------------------

    def storm(self) -> Result:
        o = self.o
        self.start_workers([])
        edges, rooms = len(self.t.edge_urls), max(1, o.rooms)
        waves: list[Result] = []
        size, cid = max(1, min(o.storm_start, o.clients)), 0
        for k in range(1, 30):
            if self.remaining_s() < o.connect_timeout_s + 10:
                log("time budget reached: stopping the storm")
                break
            specs = []
            for _ in range(size):
                specs.append(self.spec(cid, cid % rooms, cid % edges))
                cid += 1
            waves.append(self.storm_wave(k, specs))
            if not waves[-1]["sustained"] or size >= o.clients:
                break
            size = min(o.clients, max(size + 1, round(size * o.storm_factor)))
        good = [w for w in waves if w["sustained"]]
        best = max(good, key=lambda w: w["connects_per_s"]) if good else None
        return {"waves": waves, "highest_sustained": best["connects_per_s"] if best else None}

    def storm_wave(self, k: int, specs: list[ClientSpec]) -> Result:
        o = self.o
        n = self.pool.size
        cpu0, t0 = cpu_snapshot(self.t.processes), time.monotonic()
        for wid in range(n):
            self.pool.send(wid, Storm(specs[wid::n], o.connect_timeout_s, max(1, o.connect_concurrency // n)))
        res = self.pool.gather(Connected, o.connect_timeout_s * (len(specs) / max(1, o.connect_concurrency) + 2) + 60)
        w = connect_summary(res)
        spread = (max(r.last_ready_ns for r in res) - min(r.first_start_ns for r in res if r.first_start_ns)) / 1e9 \
            if w["established"] else 0.0
        w["k"] = k
        w["connects_per_s"] = round(w["established"] / spread, 1) if spread > 0 else None
        w["servers"] = self.servers(cpu0, cpu_snapshot(self.t.processes), time.monotonic() - t0, None)
        reasons = []
        if w["failed"]:
            reasons.append(f"{w['failed']} failed")
        if (w["connect_ms"]["p99"] or 0) > o.connect_p99_limit_ms:
            reasons.append(f"connect p99 {w['connect_ms']['p99']} ms > {o.connect_p99_limit_ms} ms")
        w["fail_reasons"] = reasons
        w["sustained"] = not reasons
        log(f"wave {k}: {w['established']}/{w['attempted']} connected, {w['connects_per_s']} connects/s, "
            f"p50 {w['connect_ms']['p50']} ms p99 {w['connect_ms']['p99']} ms "
            f"{'OK' if not reasons else 'FAIL ' + '; '.join(reasons)}")
        return w


# ---- pure summaries ------------------------------------------------------------------------------


def merge_counts(dicts: Iterable[dict[Any, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[str(k)] = out.get(str(k), 0) + v
    return out


def expected_by_room(plan: Plan) -> ExpectedFor:
    """Deliveries a receiver should get: everything its session's publishers sent (itself included)."""
    def expected(cid: int, sent: dict[int, int]) -> int:
        return sum(sent.get(p, 0) for p in plan.room_publishers[plan.room_of[cid]])
    return expected


def connect_summary(res: list[Connected]) -> Result:
    times = Histogram()
    for r in res:
        times.merge(r.times)
    ok = sum(r.ok for r in res)
    failed = sum(r.failed for r in res)
    return {"attempted": ok + failed, "established": ok, "failed": failed,
            "connect_ms": times.summary_ms(), "errors": dict(list(merge_counts(r.errors for r in res).items())[:8])}


def step_summary(k: int, rate: float, duration_s: float, sent: list[Sent], stats: list[StepStats],
                 expected: int) -> Result:
    latency, lag, acks, loop_lag = Histogram(), Histogram(), Histogram(), Histogram()
    for st in stats:
        latency.merge(st.latency)
        loop_lag.merge(st.loop_lag)
    for r in sent:
        lag.merge(r.lag)
        acks.merge(r.acks)
    received = sum(st.received for st in stats)
    ooo = merge_counts(st.out_of_order for st in stats)
    sent_total = sum(n for r in sent for n in r.sent.values())
    return {
        "k": k, "rate": rate, "sent": sent_total, "target": int(rate * duration_s),
        "send_errors": merge_counts(r.errors for r in sent),
        "skipped_disconnected": sum(r.skipped for r in sent),
        "expected": expected, "received": received, "loss": expected - received,
        "duplicates": sum(st.duplicates for st in stats),
        "out_of_order": sum(ooo.values()),
        "offset_duplicates": sum(st.offset_duplicates for st in stats),
        "offset_out_of_order": sum(st.offset_out_of_order for st in stats),
        "deliveries_per_s": round(received / duration_s, 1),
        "latency_ms": latency.summary_ms(), "send_lag_ms": lag.summary_ms(),
        "loadgen_loop_lag_ms": loop_lag.summary_ms(),
        "publish_ack_ms": acks.summary_ms() if acks.count else None,
        "connections_dropped": sum(st.drops for st in stats),
        "server_events": merge_counts(st.events for st in stats),
        "drain_s": round((max(st.recv_done_ns for st in stats) - max(r.send_end_ns for r in sent)) / 1e9, 3),
    }


def between(before: dict[str, dict[str, Buckets]], after: dict[str, dict[str, Buckets]],
            family: str) -> dict[str, float | None]:
    """p99 (ms) of one histogram per process that exports it, over the observations made
    between two scrapes."""
    return {name: p99_ms(before.get(name, {}).get(family, {}), got[family])
            for name, got in after.items() if family in got}


def p99_ms(before: Buckets, after: Buckets) -> float | None:
    """The 99th percentile of the observations between two scrapes of cumulative buckets, as
    the upper bound of the bucket that holds it (ms; the last finite bound when it is beyond);
    None when nothing was observed in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    finite = [b for b in bounds if b != float("inf")] or [0.0]
    bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= 0.99 * counts[-1])
    return round(1000 * (bound if bound != float("inf") else finite[-1]), 3)


def fail_reasons(s: Result, p99_limit_ms: float) -> list[str]:
    reasons = []
    p99 = s["latency_ms"]["p99"]
    if not s["received"]:
        reasons.append("nothing received")
    elif p99 > p99_limit_ms:
        reasons.append(f"p99 {p99} ms > {p99_limit_ms} ms")
    if s["loss"] > 0:
        reasons.append(f"loss {s['loss']}")
    for key in ("duplicates", "out_of_order", "offset_duplicates", "offset_out_of_order", "connections_dropped"):
        if s[key]:
            reasons.append(f"{key} {s[key]}")
    if s["sent"] < s["target"]:
        reasons.append(f"sent {s['sent']} < {s['target']}")
    if (s["send_lag_ms"]["p99"] or 0) > p99_limit_ms:
        reasons.append(f"send lag p99 {s['send_lag_ms']['p99']} ms (schedule not held: "
                       "the load generator or, for stream, the publish acks are too slow)")
    return reasons


def step_line(s: Result) -> str:
    lat, ack = s["latency_ms"], s["publish_ack_ms"]
    acks = f", publish ack p50 {ack['p50']} p99 {ack['p99']} ms" if ack else ""
    return (f"step {s['k']} rate {s['rate']}/s: sent {s['sent']}, {s['deliveries_per_s']} deliveries/s, "
            f"p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, loss {s['loss']}, "
            f"dup {s['duplicates']}, ooo {s['out_of_order']}{acks}, load generator loop lag p99 "
            f"{s['loadgen_loop_lag_ms']['p99']} ms, server CPU {s['servers']['cpu_s']} s "
            f"({s['servers']['cpu_us_per_delivery']} µs/delivery), machine "
            f"{s['servers']['machine_busy_pct']} % busy "
            f"{'OK' if s['sustained'] else 'FAIL ' + '; '.join(s['fail_reasons'])}")


def memory_per_1k(procs: list[ServerProcess], before: dict[str, int], after: dict[str, int], n: int) -> Result:
    rows: list[Result] = [
        {"name": p.name, "tier": p.tier, "rss_before_kb": before[p.name], "rss_after_kb": after[p.name],
         "kb_per_1k_connections": round((after[p.name] - before[p.name]) * 1000 / n, 1) if n else None}
        for p in procs]
    tiers: dict[str, Result] = {}
    for r in rows:
        t = tiers.setdefault(r["tier"], {"tier": r["tier"], "processes": 0, "rss_before_kb": 0, "rss_after_kb": 0})
        t["processes"] += 1
        t["rss_before_kb"] += r["rss_before_kb"]
        t["rss_after_kb"] += r["rss_after_kb"]
    for t in tiers.values():
        t["kb_per_1k_connections"] = round((t["rss_after_kb"] - t["rss_before_kb"]) * 1000 / n, 1) if n else None
    return {"connections": n, "processes": rows, "tiers": list(tiers.values())}
