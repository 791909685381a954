"""Failover benchmark: time from a router's death (kill -9) to full service on its channels.

A DevCluster with default settings; one SwitchboardClient per channel subscribed on edge 1;
one sequential HTTP publisher per channel on edge 0 (message `seq` is sent after `seq - 1` was
acknowledged, retried with the same id until acknowledged). Each rep kills the router that
owns some of the channels, measures per affected channel

  ack_s       kill -> first publish acknowledged after the kill (the one in flight counts),
  deliver_s   kill -> first delivery of a message whose first attempt started after the kill,
  max_gap_s   longest gap between consecutive deliveries in [kill - 1 s, end of the rep],

then spawns a replacement router so the next rep has the same router count. At the end every
acknowledged message must have been delivered exactly once, in order.

    uv run python -m bench.failover [--routers 3] [--edges 2] [--channels 30] [--reps 3]

Human-readable lines, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from switchboard_client import SwitchboardClient

from services.common.auth import mint_token
from services.common.sharding import owner_of
from services.devcluster import DevCluster, Proc

HOST = "127.0.0.1"
PRE_KILL_WINDOW_S = 1.0  # the gap metric starts this long before the kill
PUBLISH_GIVE_UP_S = 60.0  # one message is retried at most this long


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def log_events(path: Path, event: str, after_wall: float) -> list[tuple[float, dict[str, Any]]]:
    """(seconds after `after_wall`, record) of the JSON log lines of one event in a process log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["timestamp"]).timestamp() - after_wall
        except (ValueError, KeyError, TypeError):
            continue
        if rec.get("event") == event and at >= 0:
            out.append((at, rec))
    return out


@dataclass
class Channel:
    sid: str
    client: SwitchboardClient | None = None
    # (seq, first attempt at, acked at)
    acks: list[tuple[int, float, float]] = field(default_factory=list)
    started: dict[int, float] = field(default_factory=dict)  # seq -> first attempt at
    # (seq, received at)
    deliveries: list[tuple[int, float]] = field(default_factory=list)
    failed_attempts: int = 0
    gave_up: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"session:{self.sid}"


@dataclass
class Bench:
    cluster: DevCluster
    channels: list[Channel]
    interval_s: float
    http: httpx.AsyncClient
    publish_url: str
    token: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sub_edge: Proc | None = None
    loop_lag: list[tuple[float, float]] = field(default_factory=list)  # (at, lag)

    # ---- publishing and receiving --------------------------------------------------------

    async def publish_loop(self, ch: Channel) -> None:
        for seq in itertools.count():
            if self.stop.is_set():
                return
            body = {"channel": ch.name, "type": "chat_message", "id": f"{ch.sid}-{seq}",
                    "payload": {"content": f"m{seq}", "seq": seq}}
            started = ch.started[seq] = time.monotonic()
            while True:
                try:
                    r = await self.http.post(self.publish_url, json=body,
                                             headers={"authorization": f"Bearer {self.token}"})
                    if r.status_code == 200:
                        ch.acks.append((seq, started, time.monotonic()))
                        break
                except httpx.HTTPError:
                    pass
                ch.failed_attempts += 1
                if time.monotonic() - started > PUBLISH_GIVE_UP_S or self.stop.is_set():
                    ch.gave_up += 1
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(self.interval_s)

    async def receive_loop(self, ch: Channel) -> None:
        assert ch.client is not None
        while True:
            try:
                ev = await ch.client.next_event(3600)
            except TimeoutError:
                continue
            payload = ev.get("payload") or {}
            if ev.get("type") == "chat_message" and ev.get("channel") == ch.name and "seq" in payload:
                ch.deliveries.append((payload["seq"], time.monotonic()))

    async def lag_probe(self) -> None:
        """How late the bench's own event loop wakes up (it shares 2 cores with the cluster)."""
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.05)
            self.loop_lag.append((t, time.monotonic() - t - 0.05))

    # ---- helpers ---------------------------------------------------------------------------

    async def routers_connected(self) -> list[int]:
        out = []
        for edge in self.cluster.by_role("edge"):
            try:
                r = await self.http.get(f"http://{HOST}:{edge.port}/api/v1/stats")
                out.append(int(r.json()["routers_connected"]))
            except (httpx.HTTPError, ValueError, KeyError):
                out.append(-1)
        return out

    async def wait_routers(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(c == n for c in await self.routers_connected()):
                return True
            await asyncio.sleep(0.1)
        return False

    def max_lag(self, start: float, end: float) -> float:
        return max((lag for t, lag in self.loop_lag if start <= t <= end), default=0.0)


def max_gap(deliveries: list[tuple[int, float]], start: float, end: float) -> tuple[float, float]:
    """Longest gap between consecutive deliveries in [start, end] (the one before `start` is the
    left edge of the first gap); returns (gap, where the gap starts relative to `start`)."""
    times = [t for _, t in deliveries if t <= end]
    before = [t for t in times if t < start]
    inside = [t for t in times if t >= start]
    seq = ([before[-1]] if before else []) + inside + [end]
    best, at = 0.0, 0.0
    for a, b in itertools.pairwise(seq):
        if b - a > best:
            best, at = b - a, a - start
    return best, at


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"max": None, "median": None}
    return {"max": round(max(values), 3), "median": round(statistics.median(values), 3)}


async def one_rep(b: Bench, rep: int, *, observe_s: float, rep_timeout_s: float) -> dict[str, Any]:
    cluster = b.cluster
    routers = cluster.by_role("router")
    names = [p.name for p in routers]
    owners = {ch.name: owner_of(ch.name, names) for ch in b.channels}
    # The oldest live router that owns at least one of our channels.
    victim: Proc | None = next((p for p in routers if p.name in owners.values()), None)
    assert victim is not None, "no router owns any channel"
    affected = [ch for ch in b.channels if owners[ch.name] == victim.name]
    others = [ch for ch in b.channels if owners[ch.name] != victim.name]
    print(f"rep {rep}: routers {names}; killing {victim.name} (pid {victim.popen.pid if victim.popen else '?'}),"
          f" owner of {len(affected)}/{len(b.channels)} channels; load {loadavg()}", flush=True)

    killed_wall = time.time()
    killed_at = time.monotonic()
    victim.kill()  # SIGKILL and reap (a few ms)
    kill_returned_s = time.monotonic() - killed_at

    def first_ack(ch: Channel) -> float | None:
        return next((t - killed_at for _, _, t in ch.acks if t > killed_at), None)

    def first_new_delivery(ch: Channel) -> float | None:
        # Delivery may come before the ack, so look at first attempts, not at acks.
        return next((t - killed_at for seq, t in ch.deliveries
                     if ch.started.get(seq, 0.0) > killed_at), None)

    deadline = killed_at + rep_timeout_s
    while time.monotonic() < deadline:
        done = all(first_ack(ch) is not None and first_new_delivery(ch) is not None for ch in affected)
        if done and time.monotonic() >= killed_at + observe_s:
            break
        await asyncio.sleep(0.05)
    end = min(time.monotonic(), deadline)

    rows: list[dict[str, Any]] = []
    for ch in affected:
        gap, gap_at = max_gap(ch.deliveries, killed_at - PRE_KILL_WINDOW_S, end)
        rows.append({"channel": ch.name, "ack_s": first_ack(ch), "deliver_s": first_new_delivery(ch),
                     "max_gap_s": round(gap, 3), "gap_starts_after_kill_s": round(gap_at - PRE_KILL_WINDOW_S, 3)})
    # The same numbers on the channels the victim did not own: what "no failover" looks like
    # under the same load at the same moment.
    other_gaps = [max_gap(ch.deliveries, killed_at - PRE_KILL_WINDOW_S, end)[0] for ch in others]
    other_acks = [v for ch in others if (v := first_ack(ch)) is not None]
    other_dels = [v for ch in others if (v := first_new_delivery(ch)) is not None]
    sub_log = cluster.workdir / f"{b.sub_edge.name}.log" if cluster.workdir and b.sub_edge else None
    left = await asyncio.to_thread(log_events, sub_log, "members_changed", killed_wall) if sub_log else []
    left_s = next((round(at, 3) for at, rec in left
                   if rec.get("role") == "router" and victim.name not in rec.get("members", [])), None)
    acks = [r["ack_s"] for r in rows if r["ack_s"] is not None]
    dels = [r["deliver_s"] for r in rows if r["deliver_s"] is not None]
    gaps = [r["max_gap_s"] for r in rows]
    result: dict[str, Any] = {
        "rep": rep, "victim": victim.name, "routers_before": names, "affected": len(affected),
        "kill_call_s": round(kill_returned_s, 4),
        "window_s": round(end - killed_at, 3),
        "ack_s": summary(acks), "deliver_s": summary(dels), "max_gap_s": summary(gaps),
        "no_ack": len(rows) - len(acks), "no_delivery": len(rows) - len(dels),
        "unaffected_max_gap_s": summary(other_gaps),
        "unaffected_ack_s": summary(other_acks), "unaffected_deliver_s": summary(other_dels),
        "edge_saw_router_leave_s": left_s,
        "bench_loop_lag_max_s": round(b.max_lag(killed_at - PRE_KILL_WINDOW_S, end), 3),
        "channels": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }

    def line(label: str, key: str) -> str:
        mine, ctl = result[key], result[f"unaffected_{key}"]
        return (f"  {label:<20} affected max {mine['max']} s, median {mine['median']} s"
                f" | unaffected max {ctl['max']} s, median {ctl['median']} s")

    print(line("ack after kill:", "ack_s") + f" ({result['no_ack']} affected without)", flush=True)
    print(line("first new delivery:", "deliver_s") + f" ({result['no_delivery']} affected without)",
          flush=True)
    print(line("longest gap:", "max_gap_s"), flush=True)
    print(f"  subscriber edge dropped {victim.name} from membership {left_s} s after the kill;"
          f" bench loop lag max {result['bench_loop_lag_max_s']} s", flush=True)
    worst = max(rows, key=lambda r: r["max_gap_s"], default=None)
    if worst is not None:
        print(f"  worst gap on {worst['channel']}: {worst['max_gap_s']} s starting"
              f" {worst['gap_starts_after_kill_s']} s after the kill", flush=True)

    # Replacement, so the next rep has the same router count; then let the cluster settle.
    joined_at = time.monotonic()
    new = cluster.spawn("router")
    await asyncio.to_thread(cluster.wait_ready, new)
    seen = await b.wait_routers(len(routers), 15.0)
    await asyncio.sleep(2.0)
    settled = time.monotonic()
    result["replacement"] = new.name
    result["replacement_seen_by_edges_s"] = round(settled - 2.0 - joined_at, 3) if seen else None
    after = [p.name for p in cluster.by_role("router")]
    moved = [ch for ch in b.channels if owner_of(ch.name, after) == new.name]
    stayed = [ch for ch in b.channels if owner_of(ch.name, after) != new.name]
    result["join_moved_channels"] = len(moved)

    def join_gap(chs: list[Channel]) -> float | None:
        return round(max(max_gap(ch.deliveries, joined_at, settled)[0] for ch in chs), 3) if chs else None

    result["join_max_gap_s"] = {"moved": join_gap(moved), "not_moved": join_gap(stayed)}
    print(f"  replacement {new.name} ready and connected to both edges after"
          f" {result['replacement_seen_by_edges_s']} s; longest gap while it joined:"
          f" {result['join_max_gap_s']['moved']} s on the {len(moved)} channels it took,"
          f" {result['join_max_gap_s']['not_moved']} s on the others", flush=True)
    return result


def steady_state(channels: list[Channel], start: float, end: float) -> dict[str, Any]:
    lat = sorted(acked - started for ch in channels for _, started, acked in ch.acks if start <= started <= end)
    gaps = [max_gap(ch.deliveries, start, end)[0] for ch in channels]
    return {
        "window_s": round(end - start, 3), "acks": len(lat), "rate_per_s": round(len(lat) / (end - start), 1),
        "publish_latency_s": {
            "median": round(statistics.median(lat), 4) if lat else None,
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 4) if lat else None,
            "max": round(lat[-1], 4) if lat else None},
        "max_gap_s": summary(gaps),
    }


def verify(channels: list[Channel]) -> dict[str, int]:
    out = {"acked": 0, "delivered": 0, "lost": 0, "duplicates": 0, "out_of_order": 0,
           "unacked_delivered": 0, "failed_attempts": 0, "gave_up": 0}
    for ch in channels:
        acked = {seq for seq, _, _ in ch.acks}
        got = [seq for seq, _ in ch.deliveries]
        out["acked"] += len(acked)
        out["delivered"] += len(got)
        out["lost"] += len(acked - set(got))
        out["duplicates"] += len(got) - len(set(got))
        out["out_of_order"] += sum(1 for a, b in itertools.pairwise(got) if b <= a)
        out["unacked_delivered"] += len(set(got) - acked)
        out["failed_attempts"] += ch.failed_attempts
        out["gave_up"] += ch.gave_up
    return out


async def run(cluster: DevCluster, args: argparse.Namespace) -> dict[str, Any]:
    edges = cluster.by_role("edge")
    pub_edge, sub_edge = edges[0], edges[1 % len(edges)]
    run_id = uuid.uuid4().hex[:6]
    channels = [Channel(f"fo-{run_id}-{i}") for i in range(args.channels)]
    async with httpx.AsyncClient(timeout=10.0) as http:
        b = Bench(cluster, channels, args.interval, http, f"http://{HOST}:{pub_edge.port}/api/v1/publish",
                  mint_token(cluster.jwt_secret, "bench-publisher", scopes=["publish"], ttl_s=7200))
        b.sub_edge = sub_edge
        probe = asyncio.create_task(b.lag_probe())
        try:
            for ch in channels:
                ch.client = SwitchboardClient(
                    f"ws://{HOST}:{sub_edge.port}/api/ws/chat/{ch.sid}",
                    mint_token(cluster.jwt_secret, f"sub-{ch.sid}", sessions=[ch.sid], ttl_s=7200),
                    session_id=ch.sid, backoff_base_s=0.05, backoff_max_s=1.0)
                await ch.client.connect()
                ch.tasks.append(asyncio.create_task(b.receive_loop(ch)))
            for ch in channels:
                ch.tasks.append(asyncio.create_task(b.publish_loop(ch)))
            print(f"{len(channels)} subscribers on {sub_edge.name}, publishing on {pub_edge.name}"
                  f" every {args.interval} s per channel; warming up {args.warmup} s", flush=True)
            warm_start = time.monotonic()
            await asyncio.sleep(args.warmup)
            steady = steady_state(channels, warm_start + 1.0, time.monotonic())
            print(f"steady state (last {args.warmup - 1:.1f} s of warm-up, no fault): {steady['rate_per_s']} acks/s,"
                  f" publish latency median {steady['publish_latency_s']['median']} s,"
                  f" p99 {steady['publish_latency_s']['p99']} s, max {steady['publish_latency_s']['max']} s;"
                  f" longest delivery gap per channel: median {steady['max_gap_s']['median']} s,"
                  f" max {steady['max_gap_s']['max']} s", flush=True)
            reps = [await one_rep(b, rep, observe_s=args.observe, rep_timeout_s=args.rep_timeout)
                    for rep in range(1, args.reps + 1)]
        finally:
            b.stop.set()
            pubs = [t for ch in channels for t in ch.tasks[1:]]
            if pubs:
                await asyncio.wait(pubs, timeout=15.0)
        # Every acked message must arrive (bounded wait), then look for late duplicates.
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if all({s for s, _, _ in ch.acks} <= {s for s, _ in ch.deliveries} for ch in channels):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        check = verify(channels)
        probe.cancel()
        for ch in channels:
            for t in ch.tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if ch.client is not None:
                await ch.client.close()
        reconnects = sum(ch.client.connects - 1 for ch in channels if ch.client is not None)
    return {"reps": reps, "check": check, "subscriber_reconnects": reconnects, "steady_state": steady}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n")[0])
    p.add_argument("--routers", type=int, default=3)
    p.add_argument("--edges", type=int, default=2)
    p.add_argument("--channels", type=int, default=30)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.2, help="pause after each ack, per channel (s)")
    p.add_argument("--warmup", type=float, default=5.0, help="publishing before the first kill (s)")
    p.add_argument("--observe", type=float, default=10.0,
                   help="minimum window after each kill (s); beyond the 5 s lease TTL on purpose")
    p.add_argument("--rep-timeout", type=float, default=30.0, help="upper bound of one rep's window (s)")
    p.add_argument("--workdir", type=Path, default=None, help="process logs (default: a new temp dir)")
    args = p.parse_args(argv)
    if args.routers < 2 or args.edges < 1 or args.channels < 1 or args.reps < 1:
        p.error("need --routers >= 2, --edges >= 1, --channels >= 1, --reps >= 1")

    load_before = loadavg()
    started = time.monotonic()
    cluster = DevCluster(edges=args.edges, routers=args.routers, port=0, workdir=args.workdir)
    print(f"failover bench: routers={args.routers} edges={args.edges} channels={args.channels}"
          f" reps={args.reps}; logs in {cluster.workdir}; load before {load_before}", flush=True)
    try:
        cluster.start()
        out = asyncio.run(run(cluster, args))
    finally:
        cluster.stop()
    load_after = loadavg()

    reps = out["reps"]

    def over_reps(key: str) -> dict[str, float | None]:
        per_channel = [c[key] for r in reps for c in r["channels"] if c[key] is not None]
        return {**summary(per_channel), "median_of_rep_max": (
            round(statistics.median([r[key]["max"] for r in reps if r[key]["max"] is not None]), 3)
            if any(r[key]["max"] is not None for r in reps) else None)}

    totals = {k: over_reps(k) for k in ("ack_s", "deliver_s", "max_gap_s")}
    check = out["check"]
    ok = (check["lost"] == 0 and check["duplicates"] == 0 and check["out_of_order"] == 0
          and all(r["no_ack"] == 0 and r["no_delivery"] == 0 for r in reps))
    print(f"over {len(reps)} reps (all affected channels): ack {totals['ack_s']}, deliver"
          f" {totals['deliver_s']}, gap {totals['max_gap_s']}", flush=True)
    print(f"delivery check: {check['acked']} acked, {check['delivered']} delivered, lost {check['lost']},"
          f" duplicates {check['duplicates']}, out of order {check['out_of_order']},"
          f" failed publish attempts {check['failed_attempts']}; load after {load_after}", flush=True)
    print(json.dumps({
        "bench": "failover", "ok": ok, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_before": load_before, "loadavg_after": load_after,
        "duration_s": round(time.monotonic() - started, 1), "workdir": str(cluster.workdir),
        "steady_state": out["steady_state"], "over_reps": totals, "check": check,
        "subscriber_reconnects": out["subscriber_reconnects"],
        "reps": reps,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
