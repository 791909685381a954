"""CPU per append round trip: the owning router's store path, pooled client against its pipe.

Runs N single-event appends one after another (each waits for its answer, as a router under light
load does) through the router's own path (`Appender` -> `DirectAppends` -> `StreamWriter` -> the
stream store), once with appends on the pooled redis-py client and once on the pipelined
connection (`STORE_APPEND_PIPE`, services/common/store/pipe.py), alternated `--rounds` times, and
prints this process's CPU per append for each, then one JSON line. The store's own CPU is not in it.

    redis-server --port 6390 --save '' &
    uv run python -m bench.append_roundtrip --url redis://127.0.0.1:6390/0

It writes keys under the prefix `bench-append-<pid>` and deletes them after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from prometheus_client import CollectorRegistry

from services.common.grpc_gen.history.v1 import history_pb2 as hpb
from services.common.settings import Settings
from services.common.store.factory import open_backend
from services.history.metrics import HistoryMetrics
from services.history.store.factory import build_stream_store, stream_limits
from services.history.writer import StreamWriter
from services.router.appender import Appender, DirectAppends

BODY = b'{"type":"chat_message","content":"' + b"x" * 120 + b'"}'


async def cpu_per_append(settings: Settings, *, piped: bool, appends: int, tag: str) -> float:
    backend = open_backend(settings)
    try:
        store = build_stream_store(backend, stream_limits(settings), piped_appends=piped)
        appender = Appender(DirectAppends(StreamWriter(store, HistoryMetrics(CollectorRegistry())),
                                          timeout_s=settings.rpc_timeout_s), max_events=1000)
        await appender.append("warm", [hpb.Event(id=f"{tag}-warm", body=BODY, priority=1)])
        started = time.process_time()
        for i in range(appends):
            await appender.append(f"room{i % 100}", [hpb.Event(id=f"{tag}-{i}", body=BODY, priority=1)])
        spent = time.process_time() - started
        await appender.aclose()
        return spent / appends * 1e6
    finally:
        await backend.aclose()


async def cleanup(settings: Settings) -> None:
    backend = open_backend(settings)
    try:
        async for key in backend.redis.scan_iter(match=f"{settings.key_prefix}:*", count=500):
            await backend.redis.unlink(key)
    finally:
        await backend.aclose()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="redis:// URL of a store to write to")
    ap.add_argument("-N", "--appends", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    settings = Settings(store_url=a.url, key_prefix=f"bench-append-{os.getpid()}")
    results: dict[str, list[float]] = {"pooled": [], "pipe": []}
    try:
        for r in range(a.rounds):
            for name in ("pooled", "pipe"):
                us = await cpu_per_append(settings, piped=name == "pipe", appends=a.appends, tag=f"{name}{r}")
                results[name].append(round(us, 1))
                print(f"round {r + 1}: {name:6s} {us:6.1f} us of CPU per append", flush=True)
    finally:
        await cleanup(settings)
    medians = {k: statistics.median(v) for k, v in results.items()}
    print(f"median: pooled {medians['pooled']:.1f} us, pipe {medians['pipe']:.1f} us "
          f"({medians['pipe'] / medians['pooled']:.2f}x)")
    print(json.dumps({"appends": a.appends, "us_per_append": results, "median_us": medians}))


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
