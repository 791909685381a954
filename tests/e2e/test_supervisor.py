"""`switchboard dev` supervises its processes: a tier killed with SIGKILL comes back on the same
port while the rest keep serving; SIGTERM still stops everything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from switchboard_client import Publisher, SwitchboardClient

from services.common.auth import mint_token
from services.common.settings import DEV_JWT_SECRET
from services.devcluster import HOST, http_ok, tcp_open, wait_until
from tests.e2e.conftest import collect
from tests.support import descendants

SWITCHBOARD = [sys.executable, "-m", "services.cli"]
PROCESS_LINE = re.compile(r"^\s+(\S+)\s+pid (\d+)\s+port (\d+)\s+metrics (\S+)")
RESTARTED = re.compile(r"tier_restarted\s.*name=(\S+)\s.*pid=(\d+)")


class DevProcess:
    """`switchboard dev` as a child; its output is read by a thread into `lines`."""

    def __init__(self, tu: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        self.proc = subprocess.Popen([*SWITCHBOARD, "dev", "--port", "0"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: any("Ctrl-C stops" in line for line in self.lines), 90 * tu,
                   "switchboard dev", None)
        # name -> (pid, port, metrics url), from the banner
        self.tiers = {m[1]: (int(m[2]), int(m[3]), m[4]) for line in self.lines
                      if (m := PROCESS_LINE.match(line))}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def restarted_pid(self, name: str) -> int | None:
        found = [int(m[2]) for line in list(self.lines) if (m := RESTARTED.search(line)) and m[1] == name]
        return found[-1] if found else None

    def stop(self, timeout_s: float) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return rc


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited; only its (former) parent's bookkeeping is left


async def test_dev_restarts_killed_tiers_while_the_rest_keep_serving(tu: float) -> None:
    dev = DevProcess(tu)
    pids: set[int] = set()
    try:
        assert {"edge-1", "edge-2", "router-1", "router-2", "history-1"} <= dev.tiers.keys()
        assert all(url.startswith(f"http://{HOST}:") and url.endswith("/metrics")
                   for _, _, url in dev.tiers.values())
        pids = {pid for pid, _, _ in dev.tiers.values()} | descendants(dev.proc.pid)
        edge1_pid, edge1_port, _ = dev.tiers["edge-1"]
        _, edge2_port, _ = dev.tiers["edge-2"]
        router_pid, router_port, router_metrics = dev.tiers["router-1"]
        async with httpx.AsyncClient(timeout=5) as http:
            stats = (await http.get(f"http://{HOST}:{edge1_port}/api/v1/stats")).json()
        assert stats["pid"] == edge1_pid

        sid = "sup-" + os.urandom(4).hex()
        token = mint_token(DEV_JWT_SECRET, "watcher", sessions=[sid], ttl_s=600)
        watcher = SwitchboardClient(f"ws://{HOST}:{edge2_port}/api/ws/chat/{sid}", token,
                                    session_id=sid, reconnect=False)
        publisher = Publisher(f"http://{HOST}:{edge2_port}",
                              mint_token(DEV_JWT_SECRET, "backend", scopes=["publish"], ttl_s=600))
        await watcher.connect()
        sent: list[str] = []

        async def publish_some(tag: str) -> None:
            for i in range(5):
                await publisher.publish(f"session:{sid}", "chat_message", {"content": f"{tag} {i}"})
                sent.append(f"{tag} {i}")

        try:
            await publish_some("before")
            for name, pid in (("edge-1", edge1_pid), ("router-1", router_pid)):
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda name=name, pid=pid: (dev.restarted_pid(name) or pid) != pid,  # type: ignore[misc]
                           30 * tu, f"{name} restarted", dev.proc)
                pids.add(dev.restarted_pid(name) or 0)
                await publish_some(f"after {name}")
            # back on the same ports, ready
            wait_until(lambda: http_ok(f"http://{HOST}:{edge1_port}/readyz"), 30 * tu, "edge-1 ready")
            wait_until(lambda: tcp_open(router_port) and http_ok(router_metrics), 30 * tu, "router-1 up")
            async with httpx.AsyncClient(timeout=5) as http:
                stats = (await http.get(f"http://{HOST}:{edge1_port}/api/v1/stats")).json()
            assert stats["pid"] == dev.restarted_pid("edge-1") != edge1_pid
            await publish_some("end")
            # the watcher on the other edge got everything, in order, on its first connection
            got = await collect(watcher, len(sent), {"chat_message"}, 30 * tu)
            assert [e["payload"]["content"] for e in got] == sent
            assert watcher.connects == 1 and watcher.close_codes == []
        finally:
            await watcher.close()
            await publisher.aclose()
        assert any("tier_exited" in line and "name=router-1" in line for line in dev.lines)
        pids |= descendants(dev.proc.pid)
    finally:
        rc = dev.stop(60 * tu)
    assert rc == 0, "".join(dev.lines[-30:])
    wait_until(lambda: all(_gone(p) for p in pids), 10 * tu, "every child gone")
