"""The `switchboard` command: run a tier, the whole dev cluster, mint tokens, publish."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from services.bench.options import add_arguments as add_bench_arguments
from services.common.auth import mint_token
from services.common.process import run, tune_gc
from services.common.settings import DEV_JWT_SECRET, Settings
from services.common.telemetry import configure_logging


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _run_edge(settings: Settings) -> None:
    import uvicorn

    from services.edge.app import server_config

    uvicorn.Server(server_config(settings)).run()


async def _run_grpc_tier(role: str, settings: Settings) -> None:
    from services.common.process import stop_event_on_signals

    stop = stop_event_on_signals()
    if role == "router":
        from services.router.server import serve
    else:
        from services.history.server import serve
    await serve(settings, stop)


def cmd_tier(args: argparse.Namespace) -> int:
    settings = _settings(host=args.host, port=args.port, node_id=args.node_id,
                         store_url=args.store)
    settings.require_secrets()
    configure_logging(json=settings.log_json, level=settings.log_level)
    tune_gc()
    if args.command == "edge":
        _run_edge(settings)
    else:
        run(_run_grpc_tier(args.command, settings), settings.event_loop)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    secret = os.environ.get("SWITCHBOARD_JWT_SECRET") or (DEV_JWT_SECRET if args.dev else "")
    if not secret:
        print("SWITCHBOARD_JWT_SECRET is not set (or pass --dev for the development secret)",
              file=sys.stderr)
        return 2
    print(mint_token(secret, args.sub, sessions=args.session or (), scopes=args.scope or (),
                     ttl_s=args.ttl))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("SWITCHBOARD_TOKEN")
    if not token:
        secret = os.environ.get("SWITCHBOARD_JWT_SECRET") or DEV_JWT_SECRET
        token = mint_token(secret, "publisher", scopes=["publish"], ttl_s=300)
    body: dict[str, Any] = {"channel": args.channel, "type": args.type,
                            "payload": json.loads(args.payload)}
    if args.id:
        body["id"] = args.id
    if args.ephemeral:
        body["ephemeral"] = True
    request = urllib.request.Request(
        args.url.rstrip("/") + "/api/v1/publish", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as r:
            print(r.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        print(e.read().decode(), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"publish failed: {e}", file=sys.stderr)
        return 1


def cmd_dev(args: argparse.Namespace) -> int:
    from services.devcluster import DevCluster, find_redis, print_banner

    if args.store is None and find_redis() is None:
        print("no redis-server or valkey-server on PATH: running every tier in this process "
              "on the in-memory store (nothing survives a restart)", flush=True)
        from services.devsingle import run_single_process

        return run(run_single_process(args.edges, args.routers, args.port))
    env = {"SWITCHBOARD_LOG_JSON": "false", "SWITCHBOARD_DEMO": os.environ.get("SWITCHBOARD_DEMO", "true")}
    configure_logging(json=False)
    cluster = DevCluster(edges=args.edges, routers=args.routers, port=args.port,
                         store_url=args.store, env=env)
    supervising = stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            if not supervising:  # still starting: interrupt the waits
                raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        print_banner(cluster.edge_urls(), cluster.store_url or "", cluster.jwt_secret,
                     str(cluster.workdir), processes=cluster.describe())
        supervising = True
        # A tier that dies is restarted on its port with backoff; the others keep running.
        cluster.supervise(keep_going=lambda: not stopping)
        print("stopping the cluster", flush=True)
        return 0
    except KeyboardInterrupt:
        print("stopping the cluster", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


def cmd_bench(args: argparse.Namespace) -> int:
    from services.bench.command import run_bench
    from services.bench.options import from_namespace

    return run_bench(from_namespace(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="switchboard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for role in ("edge", "router", "history"):
        t = sub.add_parser(role, help=f"run one {role} process (settings from SWITCHBOARD_*)")
        t.add_argument("--host")
        t.add_argument("--port", type=int)
        t.add_argument("--node-id")
        t.add_argument("--store", help="store URL, e.g. redis://127.0.0.1:6379/0")
        t.set_defaults(func=cmd_tier)
    d = sub.add_parser("dev", help="run the whole cluster locally")
    d.add_argument("--edges", type=int, default=2)
    d.add_argument("--routers", type=int, default=2)
    d.add_argument("--port", type=int, default=18000, help="first edge port")
    d.add_argument("--store", help="use this store instead of starting redis-server")
    d.set_defaults(func=cmd_dev)
    k = sub.add_parser("token", help="mint a JWT for local use")
    k.add_argument("--sub", required=True)
    k.add_argument("--session", action="append")
    k.add_argument("--scope", action="append")
    k.add_argument("--ttl", type=float, default=3600.0)
    k.add_argument("--dev", action="store_true", help="sign with the development secret")
    k.set_defaults(func=cmd_token)
    u = sub.add_parser("publish", help="publish an event through an edge's HTTP API")
    u.add_argument("--url", default="http://127.0.0.1:18000")
    u.add_argument("--channel", required=True)
    u.add_argument("--type", default="chat_message")
    u.add_argument("--payload", default="{}")
    u.add_argument("--id")
    u.add_argument("--ephemeral", action="store_true")
    u.add_argument("--token")
    u.add_argument("--timeout", type=float, default=10.0)
    u.set_defaults(func=cmd_publish)
    b = sub.add_parser("bench", help="load-test a cluster (fanout, idle, stream, storm) and print a table")
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
