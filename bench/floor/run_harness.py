"""Runs the shared harness's `loadgen.py` with one more adapter, `floor-py` (floor_picows.py).

The harness is not changed: this registers the adapter in its registry and calls its `main`.
Run from a copy of the harness (`../shared/bench`, copied and set up as its README says):

    cd /path/to/bench-copy && .venv/bin/python /path/to/switchboard/bench/floor/run_harness.py \\
        --adapter floor-py --scenario step -C 2000 -R 100 -P 100 --step-start 500 -T 10 -W 1

Every other option is the harness's own (`--help`). `floor-py` takes N nodes (default 2), each a
`floor_picows.py` process with a link to every other node, and the harness's private Redis.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FLOOR_SERVER = Path(__file__).resolve().parent / "floor_picows.py"


def register(harness: Path) -> None:
    sys.path.insert(0, str(harness))
    from adapters import ADAPTERS  # the harness's registry
    from adapters.base import HOST, Adapter, ManagedProcess, free_ports, pkg_version, venv_python, wait_tcp

    class FloorAdapter(Adapter):
        name = "floor-py"
        protocol = "json"
        uses_redis = True
        default_nodes = 2

        def start(self, nodes: int, redis_url: str | None, run_dir: Path) -> None:
            assert redis_url is not None
            ports = free_ports(2 * nodes)
            ws, links = ports[:nodes], ports[nodes:]
            for i in range(nodes):
                peers = [a for j, p in enumerate(links) if j != i for a in ("--peer", str(p))]
                argv = [venv_python(), str(FLOOR_SERVER), "--port", str(ws[i]),
                        "--link", str(links[i]), *peers, "--redis", redis_url]
                mp = ManagedProcess(f"{self.name}-node{i}", argv, cwd=harness,
                                    log_path=run_dir / f"{self.name}-node{i}.log")
                self.procs.append(mp.start())
            for mp, port in zip(self.procs, ws, strict=True):
                wait_tcp(HOST, port, 30.0, mp.proc)
                self.endpoints.append((HOST, port, "/"))

        def describe(self) -> dict[str, str | None]:
            return {"server": "floor_picows.py: picows + uvloop + orjson, XADD to Redis before "
                              "delivery (one pipelined connection per node), a TCP link per "
                              "pair of nodes",
                    "picows": pkg_version("picows"), "uvloop": pkg_version("uvloop")}

    ADAPTERS[FloorAdapter.name] = FloorAdapter


if __name__ == "__main__":
    harness = Path(os.environ.get("BENCH_HARNESS_DIR", os.getcwd())).resolve()
    register(harness)
    import loadgen  # the harness's, after the registry has the adapter

    raise SystemExit(loadgen.main(sys.argv[1:]))
