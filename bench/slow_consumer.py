"""Slow-consumer benchmark: the edge's memory stays flat while readers stop reading.

A DevCluster with one edge and one router. N raw WebSocket clients (tests/support/rawws.py:
a 4 KiB receive buffer and no background reader) authenticate into one session and then never
read; one normal SwitchboardClient reads the same session; a publisher in the session sends M
messages of --size bytes in `batch` frames of at most 40 messages. The edge's RSS is sampled
every 0.5 s. Reported: baseline, peak and final RSS, how many slow readers the edge closed
(`closes_by_code` in /api/v1/stats, `edge_send_queue_overflows_total` in /metrics), and whether
the normal reader got all M in order. A control run with no slow reader gives the peak RSS of
the same traffic alone.

    uv run python -m bench.slow_consumer [--slow 50] [--messages 20000] [--size 1000]

Human-readable lines, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from switchboard_client import SwitchboardClient

from services.common.auth import mint_token
from services.devcluster import DevCluster
from tests.support.rawws import RawWebSocket

HOST = "127.0.0.1"
BATCH_MAX = 40
FRAME_BUDGET = 60_000  # under the edge's 64 KiB frame limit, with room for the JSON around it


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples one process's VmRSS every `period_s` until stopped (a thread: /proc reads block)."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []  # (seconds since start, KiB)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((time.monotonic() - self.t0, kib))
            self._stop_event.wait(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def now(self) -> int:
        return rss_kib(self.pid) or 0

    def peak(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


def open_slow_reader(port: int, sid: str, token: str) -> RawWebSocket:
    """Connect, authenticate and read the auth reply; after that the socket is never read."""
    ws = RawWebSocket(port, f"/api/ws/chat/{sid}", timeout_s=30.0)
    ws.send_json({"token": token, "session_id": sid})
    _, payload = ws.recv_frame()
    if not json.loads(payload).get("success"):
        ws.close()
        raise RuntimeError(f"slow reader auth failed: {payload[:200]!r}")
    return ws


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


async def edge_counters(http: httpx.AsyncClient, port: int) -> dict[str, Any]:
    stats = (await http.get(f"http://{HOST}:{port}/api/v1/stats")).json()
    metrics = (await http.get(f"http://{HOST}:{port}/metrics")).text
    return {"closes_by_code": stats.get("closes_by_code", {}),
            "active_connections": stats.get("active_connections"),
            "send_queue_total": stats.get("send_queue_total"),
            "send_queue_overflows_total": metric(metrics, "edge_send_queue_overflows_total")}


async def case(cluster: DevCluster, *, slow: int, messages: int, size: int, ahead: int,
               deliver_timeout_s: float) -> dict[str, Any]:
    edge = cluster.by_role("edge")[0]
    assert edge.popen is not None
    sid = "slow-" + uuid.uuid4().hex[:8]
    url = f"ws://{HOST}:{edge.port}/api/ws/chat/{sid}"
    secret = cluster.jwt_secret
    sampler = RssSampler(edge.popen.pid)
    sampler.start()
    idle = sampler.now()
    out: dict[str, Any] = {"slow_readers": slow, "messages": messages, "size": size, "ahead": ahead,
                           "edge_pid": edge.popen.pid}
    raws: list[RawWebSocket] = []
    reader = SwitchboardClient(url, mint_token(secret, "reader", sessions=[sid]), session_id=sid)
    sender = SwitchboardClient(url, mint_token(secret, "sender", sessions=[sid]), session_id=sid)
    tasks: list[asyncio.Task[None]] = []
    got: list[int] = []
    offsets: list[int] = []
    all_in = asyncio.Event()
    progress = asyncio.Event()  # set on every message the reader gets (paces the sender)

    async def read() -> None:
        while True:
            ev = await reader.next_event(3600)
            if ev.get("type") == "chat_message":
                got.append(int(ev["payload"]["content"].split(" ", 1)[0]))
                offsets.append(int(ev.get("offset", 0)))
                progress.set()
                if len(got) >= messages:
                    all_in.set()

    async def drain_sender() -> None:  # the sender is in the session too: keep it reading
        while True:
            await sender.next_event(3600)

    async with httpx.AsyncClient(timeout=10.0) as http:
        try:
            for i in range(slow):
                raws.append(await asyncio.to_thread(
                    open_slow_reader, edge.port, sid, mint_token(secret, f"slow-{i}", sessions=[sid])))
            await reader.connect()
            await sender.connect()
            tasks += [asyncio.create_task(read()), asyncio.create_task(drain_sender())]
            await asyncio.sleep(1.0)
            baseline = sampler.now()
            print(f"  {slow} slow readers + 1 reader + 1 sender connected; edge RSS idle {idle / 1024:.1f} MiB,"
                  f" baseline {baseline / 1024:.1f} MiB", flush=True)

            pad_len = max(0, size - 8)
            batch = max(1, min(BATCH_MAX, FRAME_BUDGET // (size + 64)))
            sent_at = time.monotonic()
            for start in range(0, messages, batch):
                # Paced: at most `ahead` messages beyond what the reader has (0: one burst).
                while ahead and start - len(got) > ahead:
                    progress.clear()
                    await asyncio.wait_for(progress.wait(), max(0.01, sent_at + deliver_timeout_s - time.monotonic()))
                n = min(batch, messages - start)
                await sender.send("batch", {"messages": [
                    {"type": "chat_message", "payload": {"content": f"{i:07d} " + "x" * pad_len}}
                    for i in range(start, start + n)]}, timeout_s=60.0)
            send_s = time.monotonic() - sent_at
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deliver_timeout_s):
                    await all_in.wait()
            deliver_s = time.monotonic() - sent_at
            print(f"  sent {messages} x {size} B in {send_s:.1f} s (batches of {batch},"
                  f" {f'at most {ahead} ahead of the reader' if ahead else 'one burst'});"
                  f" reader has {len(got)} after {deliver_s:.1f} s", flush=True)

            # Slow readers are closed after their queue overflows, the close waiting at most the
            # drain grace (5 s) behind what their socket holds: wait for all of them (bounded).
            deadline = time.monotonic() + 30.0
            counters = await edge_counters(http, edge.port)
            while slow and time.monotonic() < deadline:
                if counters["closes_by_code"].get("4008", 0) >= slow and counters["active_connections"] <= 2:
                    break
                await asyncio.sleep(0.5)
                counters = await edge_counters(http, edge.port)
            await asyncio.sleep(2.0)  # let the edge release what the closed connections held
            counters = await edge_counters(http, edge.port)
            final = sampler.now()
        finally:
            sampler.stop()
            for t in tasks:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await reader.close()
            await sender.close()
            for ws in raws:
                ws.close()

    in_order = got == list(range(messages))
    offsets_ok = all(b > a for a, b in itertools.pairwise(offsets))
    peak = sampler.peak()
    out.update({
        "batch": batch, "send_s": round(send_s, 2), "deliver_all_s": round(deliver_s, 2),
        "msgs_per_s": round(len(got) / deliver_s, 1) if deliver_s else None,
        "rss_mib": {"idle": round(idle / 1024, 1), "baseline": round(baseline / 1024, 1),
                    "peak": round(peak / 1024, 1), "final": round(final / 1024, 1),
                    "peak_over_baseline": round((peak - baseline) / 1024, 1)},
        "rss_samples": len(sampler.samples),
        "rss_series_mib": [[round(t, 1), round(kib / 1024, 1)] for t, kib in sampler.samples],
        "reader_received": len(got), "reader_all_in_order": in_order and len(got) == messages,
        "reader_offsets_increasing": offsets_ok,
        "slow_closed_4008": int(counters["closes_by_code"].get("4008", 0)),
        "closes_by_code": counters["closes_by_code"],
        "send_queue_overflows_total": counters["send_queue_overflows_total"],
        "active_connections_after": counters["active_connections"],
    })
    r = out["rss_mib"]
    print(f"  RSS MiB: baseline {r['baseline']}, peak {r['peak']} (+{r['peak_over_baseline']}), final {r['final']};"
          f" closed 4008: {out['slow_closed_4008']}/{slow}, queue overflows {out['send_queue_overflows_total']:.0f};"
          f" reader got {len(got)}/{messages}, in order: {out['reader_all_in_order']}", flush=True)
    return out


def run_case(args: argparse.Namespace, slow: int, label: str) -> dict[str, Any]:
    workdir = args.workdir / label if args.workdir else None
    # The publisher sends far above the per-connection client rate limit on purpose.
    cluster = DevCluster(edges=1, routers=1, port=0, workdir=workdir,
                         env={"SWITCHBOARD_CLIENT_RATE_PER_S": "1000000", "SWITCHBOARD_CLIENT_BURST": "1000000"})
    print(f"{label}: {slow} slow readers; logs in {cluster.workdir}; load {loadavg()}", flush=True)
    try:
        cluster.start()
        result = asyncio.run(case(cluster, slow=slow, messages=args.messages, size=args.size,
                                  ahead=args.ahead, deliver_timeout_s=args.deliver_timeout))
    finally:
        cluster.stop()
    result["workdir"] = str(cluster.workdir)
    result["loadavg_after"] = loadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slow_consumer", description=__doc__.split("\n")[0])
    p.add_argument("--slow", type=int, default=50, help="slow readers (N)")
    p.add_argument("--messages", type=int, default=20_000, help="messages published (M)")
    p.add_argument("--size", type=int, default=1000, help="bytes of content per message")
    p.add_argument("--ahead", type=int, default=2000,
                   help="pace the sender: at most this many messages beyond what the reader got (0: one burst)")
    p.add_argument("--deliver-timeout", type=float, default=180.0, help="bound on delivering all M (s)")
    p.add_argument("--no-control", action="store_true", help="skip the control run with no slow reader")
    p.add_argument("--workdir", type=Path, default=None, help="process logs (default: new temp dirs)")
    args = p.parse_args(argv)
    if args.slow < 0 or args.ahead < 0 or args.messages < 1 or args.size < 8 or args.size > FRAME_BUDGET - 64:
        p.error("need --slow >= 0, --messages >= 1 and 8 <= --size <= 59936")

    load_before = loadavg()
    started = time.monotonic()
    print(f"slow-consumer bench: N={args.slow} M={args.messages} size={args.size} ahead={args.ahead};"
          f" load before {load_before}", flush=True)
    runs = {"slow": run_case(args, args.slow, "slow")}
    if not args.no_control:
        runs["control"] = run_case(args, 0, "control")
    load_after = loadavg()

    s = runs["slow"]
    ok = s["reader_all_in_order"] and s["slow_closed_4008"] == args.slow
    if "control" in runs:
        c = runs["control"]
        ok = ok and c["reader_all_in_order"]
        print(f"peak RSS: {s['rss_mib']['peak']} MiB with {args.slow} slow readers vs {c['rss_mib']['peak']} MiB"
              f" without (peak over baseline +{s['rss_mib']['peak_over_baseline']} vs"
              f" +{c['rss_mib']['peak_over_baseline']} MiB); load after {load_after}", flush=True)
    print(json.dumps({
        "bench": "slow_consumer", "ok": ok, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "loadavg_before": load_before, "loadavg_after": load_after,
        "duration_s": round(time.monotonic() - started, 1), "runs": runs,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
