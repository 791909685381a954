"""Connect-storm timeline: when in a storm are connections slow?

Opens C WebSocket connections (at most --concurrency in flight) to the edges of a running
cluster, spread like the shared harness (client i joins session room{i % R} on edge
(i // R) % edges), each timed from its TCP connect to the auth reply. Prints p50/p99/max for
the whole storm and p50/max per tenth of it in start order: a slow first tenth is a cold-start
cost (first attaches, pool connections), a slow later tenth a pause (GC, a store stall). Each
connection's time is split at the 101 (the handshake, mostly the client's own pace) and the
auth reply after it (the edge's work and its wait for the router's attach answer), for the
storm's first wave (`--concurrency` connections started at once; with the defaults all on the
first edge) and for its slowest 1 %, the connections the p99 is made of. Then one JSON line
with every number. All connections use one token, as the harness does.

    switchboard dev --edges 2 --routers 2 --port 18000 &     # SWITCHBOARD_ALLOW_ANY_SESSION=true
    uv run --group bench python -m bench.connect_timeline --port 18000 --edges 2 -C 2000

Needs the `bench` dependency group (picows, uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from services.common.auth import mint_token
from services.common.settings import DEV_JWT_SECRET


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


async def storm(port: int, edges: int, clients: int, rooms: int, concurrency: int, token: str,
                timeout_s: float, hold_s: float = 0.0) -> list[tuple[float, float, float]]:
    """(start offset s, connect+auth ms, of which until the 101 ms) per connection, in start order."""
    from picows import WSListener, WSMsgType, ws_connect

    class Client(WSListener):
        def __init__(self, room: str, done: asyncio.Future[bool]) -> None:
            self.room, self.done = room, done
            self.upgraded = 0.0

        def on_ws_connected(self, transport: Any) -> None:
            self.upgraded = time.perf_counter()
            transport.send(WSMsgType.TEXT, json.dumps({"token": token, "session_id": self.room}).encode())

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT and not self.done.done():
                reply = json.loads(frame.get_payload_as_bytes())
                if "success" in reply:
                    self.done.set_result(bool(reply["success"]))

    gate = asyncio.Semaphore(concurrency)
    results: list[tuple[float, float, float]] = []
    transports: list[Any] = []
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        async with gate:
            room = f"room{i % rooms}"
            url = f"ws://127.0.0.1:{port + (i // rooms) % edges}/ws/chat/{room}"
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            client = Client(room, done)
            transport, _ = await asyncio.wait_for(ws_connect(lambda: client, url), timeout_s)
            transports.append(transport)
            if not await asyncio.wait_for(done, timeout_s):
                raise RuntimeError(f"auth refused for connection {i}")
            results.append((started - t0, (time.perf_counter() - started) * 1000,
                            (client.upgraded - started) * 1000))

    try:
        await asyncio.gather(*(one(i) for i in range(clients)))
        if hold_s:
            print(f"all {clients} connected; holding them {hold_s:g} s", flush=True)
            await asyncio.sleep(hold_s)
    finally:
        for transport in transports:
            transport.disconnect()
    return sorted(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=18000, help="the first edge's port")
    ap.add_argument("--edges", type=int, default=2, help="edges on consecutive ports")
    ap.add_argument("-C", "--clients", type=int, default=2000)
    ap.add_argument("-R", "--rooms", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100, help="connections in flight (the harness: 100)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per connect and per auth reply")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="seconds to keep the connections open after the storm (say so first)")
    a = ap.parse_args()
    secret = os.environ.get("SWITCHBOARD_JWT_SECRET") or DEV_JWT_SECRET
    token = mint_token(secret, "benchuser", ttl_s=3600)

    import uvloop
    results = uvloop.run(storm(a.port, a.edges, a.clients, a.rooms, a.concurrency, token, a.timeout, a.hold))
    latencies = sorted(ms for _, ms, _ in results)
    whole = {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "max": latencies[-1],
             "all_established_s": results[-1][0] + results[-1][1] / 1000}
    print(f"{a.clients} connections: p50 {whole['p50']:.1f} ms, p99 {whole['p99']:.1f} ms, "
          f"max {whole['max']:.1f} ms, all in {whole['all_established_s']:.3f} s")
    tenths = []
    size = max(1, len(results) // 10)
    for k in range(0, len(results), size):
        part = sorted(ms for _, ms, _ in results[k:k + size])
        tenths.append({"from_ms": round(results[k][0] * 1000, 1), "p50": part[len(part) // 2], "max": part[-1]})
        print(f"  from {tenths[-1]['from_ms']:7.1f} ms: p50 {tenths[-1]['p50']:6.1f}  max {tenths[-1]['max']:6.1f}")
    slowest = sorted(results, key=lambda r: r[1])[-max(1, len(results) // 100):]
    parts = {"first_wave": split(results[:a.concurrency]), "slowest_1pct": split(slowest)}
    for name, group in parts.items():
        print(f"  {name.replace('_', ' ').replace('pct', ' %')}: started {group['started_ms'][0]:.0f} to "
              f"{group['started_ms'][1]:.0f} ms; 101 after p50 {group['upgrade_ms']['p50']:.1f} "
              f"(max {group['upgrade_ms']['max']:.1f}) ms, the reply p50 {group['reply_ms']['p50']:.1f} "
              f"(max {group['reply_ms']['max']:.1f}) ms after that")
    print(json.dumps({"clients": a.clients, "concurrency": a.concurrency, "connect_ms": whole, "tenths": tenths,
                      **parts}))


def split(part: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Where a group of connections spent its time: until the 101, then until the auth reply."""
    upgrade = sorted(up for _, _, up in part)
    reply = sorted(ms - up for _, ms, up in part)
    return {"started_ms": [min(s for s, _, _ in part) * 1000, max(s for s, _, _ in part) * 1000],
            "upgrade_ms": {"p50": percentile(upgrade, 0.5), "max": upgrade[-1]},
            "reply_ms": {"p50": percentile(reply, 0.5), "max": reply[-1]}}


if __name__ == "__main__":
    main()
