"""A local Switchboard cluster for the TypeScript client's integration and browser tests.

Run from the repository root with the repo's Python. Starts `DevCluster(edges=2, routers=2)` on
free ports (`--demo` also serves the demo page from clients/typescript/dist/demo), prints one JSON
line `{"edges": [{"url", "http", "pid"}], "secret", "workdir"}`, then reads commands from stdin:
`revive` restarts every dead edge on its old port and prints the JSON line again. It stops the
cluster when stdin closes (the test runner exited or closed the pipe).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.devcluster import DevCluster

ROOT = Path(__file__).resolve().parents[4]


def describe(cluster: DevCluster) -> str:
    edges = [{"url": f"ws://127.0.0.1:{p.port}", "http": f"http://127.0.0.1:{p.port}",
              "pid": p.popen.pid if p.popen else 0} for p in cluster.by_role("edge")]
    return json.dumps({"edges": edges, "secret": cluster.jwt_secret, "workdir": str(cluster.workdir)})


def revive(cluster: DevCluster) -> None:
    for proc in [p for p in cluster.procs if p.role == "edge" and not p.alive]:
        cluster.restart(proc)


def main() -> None:
    env = {"SWITCHBOARD_ALLOW_ANY_SESSION": "true", "SWITCHBOARD_LOG_JSON": "true",
           "SWITCHBOARD_LOG_LEVEL": "warning"}
    if "--demo" in sys.argv:
        env["SWITCHBOARD_DEMO"] = "true"
        env["SWITCHBOARD_DEMO_DIR"] = str(ROOT / "clients" / "typescript" / "dist" / "demo")
        env["SWITCHBOARD_PRESENCE_TTL_S"] = "4"
    cluster = DevCluster(edges=2, routers=2, port=0, env=env)
    try:
        cluster.start()
        print(describe(cluster), flush=True)
        for line in sys.stdin:
            if line.strip() == "revive":
                revive(cluster)
                print(describe(cluster), flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
