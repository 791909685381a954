"""Ports handed to cluster processes: free, distinct, and outside the kernel's ephemeral range
(where an outgoing connection could take one before its process binds it)."""

from __future__ import annotations

import socket
from pathlib import Path

from services.devcluster import PORT_RANGE, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(PORT_RANGE[0] <= p <= PORT_RANGE[1] for p in ports)
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert PORT_RANGE[1] < low
    for port in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
