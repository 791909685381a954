"""A publisher sending sequenced messages into sessions while a fault happens, subscribers on
different edges, and the check of what every subscriber received.

Each session has one sequential publisher: message `seq` is published (over HTTP, to the edges
in turn, retried with the same id until acknowledged) only after `seq - 1` was acknowledged, so
seq order is offset order. A subscriber must receive every acknowledged message exactly once,
in seq order; a message that was stored but whose ack was lost may arrive too, but never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from switchboard_client import SwitchboardClient

from services.devcluster import DevCluster
from tests.e2e.conftest import token_for


@dataclass
class Subscriber:
    session: str
    client: SwitchboardClient
    seqs: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                ev = await self.client.next_event(3600)
            except TimeoutError:
                continue
            if ev.get("type") == "chat_message" and "seq" in ev.get("payload", {}):
                self.seqs.append(ev["payload"]["seq"])


@dataclass
class Report:
    published: int = 0
    acked: int = 0
    failed_attempts: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    delivered: int = 0
    max_ack_gap_s: float = 0.0
    details: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.lost == 0 and self.duplicates == 0 and self.out_of_order == 0, self


class Scenario:
    def __init__(self, cluster: DevCluster, *, sessions: int = 3, interval_s: float = 0.01,
                 tu: float = 1.0) -> None:
        self.cluster = cluster
        self.sessions = [f"fault-{i}-{int(time.time() * 1000) % 100000}" for i in range(sessions)]
        self.interval_s = interval_s
        self.tu = tu
        self.subscribers: list[Subscriber] = []
        self.acked: dict[str, list[int]] = {s: [] for s in self.sessions}
        self.ack_times: dict[str, list[float]] = {s: [] for s in self.sessions}
        self.failed_attempts = 0
        self._stop = asyncio.Event()
        self._publishers: list[asyncio.Task[None]] = []
        self._http = httpx.AsyncClient(timeout=5 * tu)
        self._token = token_for(cluster, "fault-publisher", scopes=["publish"])

    def edge_urls(self, first: int) -> list[str]:
        ports = [p.port for p in self.cluster.procs if p.role == "edge"]
        ports = ports[first:] + ports[:first]
        return [f"ws://127.0.0.1:{port}/api/ws/chat/" for port in ports]

    async def start_subscribers(self, per_session: int = 2) -> None:
        for session in self.sessions:
            for i in range(per_session):
                urls = [u + session for u in self.edge_urls(i)]
                client = SwitchboardClient(urls, token_for(self.cluster, f"sub-{i}", [session]),
                                           session_id=session, backoff_base_s=0.05, backoff_max_s=1.0)
                await client.connect()
                sub = Subscriber(session, client)
                sub.task = asyncio.create_task(sub.run())
                self.subscribers.append(sub)

    def start_publishing(self, per_session: int) -> None:
        for session in self.sessions:
            self._publishers.append(asyncio.create_task(self._publish(session, per_session)))

    async def _publish(self, session: str, count: int) -> None:
        for seq in range(count):
            if self._stop.is_set():
                return
            await self._publish_one(session, seq)
            self.acked[session].append(seq)
            self.ack_times[session].append(time.monotonic())
            await asyncio.sleep(self.interval_s)

    async def _publish_one(self, session: str, seq: int) -> dict[str, Any]:
        body = {"channel": f"session:{session}", "type": "chat_message", "id": f"{session}-{seq}",
                "payload": {"content": f"m{seq}", "seq": seq}}
        attempt = 0
        deadline = time.monotonic() + 60 * self.tu
        while True:
            edges = [p for p in self.cluster.procs if p.role == "edge" and p.alive]
            port = edges[attempt % len(edges)].port if edges else 0
            try:
                r = await self._http.post(f"http://127.0.0.1:{port}/api/v1/publish", json=body,
                                          headers={"authorization": f"Bearer {self._token}"})
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.HTTPError:
                pass
            self.failed_attempts += 1
            attempt += 1
            assert time.monotonic() < deadline, f"{session}-{seq} never acknowledged"
            await asyncio.sleep(0.05)

    async def wait_published(self) -> None:
        await asyncio.gather(*self._publishers)

    async def verify(self, timeout_s: float = 30.0) -> Report:
        """Wait (bounded) until every subscriber has every acked message, then report."""
        deadline = time.monotonic() + timeout_s * self.tu
        while time.monotonic() < deadline:
            if all(set(self.acked[s.session]) <= set(s.seqs) for s in self.subscribers):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5 * self.tu)  # late duplicates would show up now
        report = Report(failed_attempts=self.failed_attempts)
        report.published = report.acked = sum(len(v) for v in self.acked.values())
        for s in self.subscribers:
            acked = set(self.acked[s.session])
            missing = acked - set(s.seqs)
            report.lost += len(missing)
            report.duplicates += len(s.seqs) - len(set(s.seqs))
            report.out_of_order += sum(1 for a, b in zip(s.seqs, s.seqs[1:], strict=False) if b <= a)
            report.delivered += len(s.seqs)
            if missing:
                report.details.append(f"{s.session}: missing {sorted(missing)[:10]}")
        for times in self.ack_times.values():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            report.max_ack_gap_s = max([report.max_ack_gap_s, *gaps])
        return report

    async def aclose(self) -> None:
        self._stop.set()
        for task in self._publishers:
            task.cancel()
        for s in self.subscribers:
            if s.task is not None:
                s.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await s.task
            await s.client.close()
        await self._http.aclose()
