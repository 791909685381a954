"""`python -m services.healthcheck [edge|router|history]`: exit 0 when the local tier is healthy.

The container image's HEALTHCHECK (one image for every tier, so the tier is not known there).
It asks the process listening on 127.0.0.1:$SWITCHBOARD_PORT:

- edge: HTTP `GET /healthz` answers 200;
- router, history: the standard gRPC health `Check` (service "") answers SERVING.

Without a tier argument it tells them apart by the first answer: an HTTP/1.1 reply is the edge;
a gRPC server answers an HTTP/1.1 request with HTTP/2 frames, so the gRPC check follows. Nothing
listening, a timeout (2 s per attempt) or any other answer exits 1. Kubernetes does not use this
(its probes are declared in k8s/); Docker, Compose and Podman do.
"""

from __future__ import annotations

import argparse
import http.client
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import Settings

TIMEOUT_S = 2.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


class NotHttp(Exception):
    """The listener answered, but not in HTTP/1.1 (a gRPC server)."""


def local_host(settings: Settings) -> str:
    """Where to reach this process: loopback unless it is bound to one specific address."""
    host = settings.host
    return "127.0.0.1" if host in _WILDCARDS else host


def http_healthy(host: str, port: int, timeout_s: float = TIMEOUT_S) -> bool:
    """True on 200 from GET /healthz; raises NotHttp when the listener does not speak HTTP/1.1."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz", headers={"user-agent": "switchboard-healthcheck"})
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (http.client.BadStatusLine, http.client.RemoteDisconnected) as e:
        raise NotHttp(str(e)[:80]) from e
    except OSError:
        return False
    finally:
        conn.close()


def grpc_healthy(host: str, port: int, timeout_s: float = TIMEOUT_S) -> bool:
    """True when the gRPC health service answers SERVING for the server as a whole."""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def check(tier: str | None, host: str, port: int, timeout_s: float = TIMEOUT_S) -> bool:
    if tier in ("router", "history"):
        return grpc_healthy(host, port, timeout_s)
    try:
        return http_healthy(host, port, timeout_s)
    except NotHttp:
        return tier is None and grpc_healthy(host, port, timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.healthcheck", description=__doc__.split("\n")[0])
    parser.add_argument("tier", nargs="?", choices=("edge", "router", "history"),
                        help="the tier to expect (default: tell from the answer)")
    args = parser.parse_args(argv)
    settings = Settings()
    host, port = local_host(settings), settings.port
    healthy = check(args.tier, host, port)
    print(f"{'healthy' if healthy else 'unhealthy'} {host}:{port}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
