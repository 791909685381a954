"""Ports handed to cluster processes: free, distinct, and outside the kernel's ephemeral range
(where an outgoing connection could take one before its process binds it)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from services import devcluster
from services.devcluster import PORT_RANGE, DevCluster, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(PORT_RANGE[0] <= p <= PORT_RANGE[1] for p in ports)
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert PORT_RANGE[1] < low
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


class _Picks(random.Random):
    """Picks the given ports in turn, then any."""

    def __init__(self, *ports: int) -> None:
        super().__init__()
        self.ports = list(ports)

    def randint(self, a: int, b: int) -> int:
        return self.ports.pop(0) if self.ports else super().randint(a, b)


def test_the_edges_ports_asked_for_are_never_handed_to_other_tiers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`switchboard dev --port P` starts history and routers first, on picked ports: none of
    them may take P..P+edges-1 (the bench harness saw an edge's port answered by gRPC)."""
    base = 27_000
    while any(p in devcluster._handed_out for p in range(base, base + 4)):
        base += 10
    DevCluster(edges=3, port=base, workdir=tmp_path)
    monkeypatch.setattr(devcluster, "_rng", _Picks(base, base + 1, base + 2))
    assert free_port() not in (base, base + 1, base + 2)
    monkeypatch.setattr(devcluster, "_rng", _Picks(base + 3))
    assert free_port() == base + 3  # the next one is no edge's
