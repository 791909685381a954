"""One sender's messages are stored in the order it sent them, even when publishes fail and are
retried while many more from the same connection are waiting.

The bug this guards against: with many appends in flight, history's store pool ran out, the
failure was reported as "store unavailable", the edge retried that publish, and by then later
publishes of the same connection had been stored: the retry landed behind them.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx

from services.devcluster import DevCluster
from tests.e2e.conftest import chat_url, collect, token_for


def _log_lines(cluster: DevCluster, role: str, *needles: str) -> int:
    assert cluster.workdir is not None
    return sum(1 for path in Path(cluster.workdir).glob(f"{role}-*.log")
               for line in path.read_text(errors="replace").splitlines()
               if all(n in line for n in needles))


async def _send_and_check(cluster: DevCluster, clients, tu: float, *, senders: int, per_sender: int,
                          fault=None) -> None:
    """Each sender pipelines its messages into its own session (they wait on the edge, not on
    the client); every message must come back exactly once, in send order, with no error."""
    sessions = [f"order-{i}" for i in range(senders)]
    conns = []
    for i, sid in enumerate(sessions):
        c = clients(chat_url(cluster, i % 2, sid), token_for(cluster, f"sender-{i}", [sid]),
                    session_id=sid)
        await c.connect()
        conns.append(c)

    async def send_all(i: int) -> None:
        for n in range(per_sender):
            await conns[i].chat(f"{i}:{n}", message_id=f"m-{i}-{n}")

    sending = asyncio.gather(*(send_all(i) for i in range(senders)))
    if fault is not None:
        await fault()
    await sending
    for i, c in enumerate(conns):
        events = await collect(c, per_sender, {"chat_message", "connection_error"}, 30 * tu)
        errors = [e for e in events if e["type"] == "connection_error"]
        assert not errors, f"sender {i} got {errors[:2]}"
        contents = [e["payload"]["content"] for e in events]
        assert contents == [f"{i}:{n}" for n in range(per_sender)], f"sender {i} out of order"
        offsets = [e["offset"] for e in events]
        assert offsets == list(range(offsets[0], offsets[0] + per_sender)), "gap or duplicate"


async def test_busy_store_pool_keeps_each_senders_order(make_cluster, clients, tu) -> None:
    # One pooled connection and a 0.1 ms wait: whenever two store calls overlap in a router (up
    # to two append calls in flight, the ownership refresh and the lease refresh), the pool is
    # exhausted, so appends fail as "busy" and are retried. Appends on the pooled client, as
    # for a rediss:// or unix:// store (with redis://, the router appends over its own pipe).
    cluster = make_cluster(env={"SWITCHBOARD_STORE_MAX_CONNECTIONS": "1",
                                "SWITCHBOARD_STORE_POOL_WAIT_S": "0.0001",
                                "SWITCHBOARD_STORE_APPEND_PIPE": "false"})
    await _send_and_check(cluster, clients, tu, senders=24, per_sender=40)
    busy = _log_lines(cluster, "router", "append_failed", "busy")
    print(f"\nORDER busy-pool appends_failed_busy={busy}")
    assert busy > 0, "the store pool never ran out: the test proved nothing"
    assert _log_lines(cluster, "history", "history_health", "false") == 0, \
        "a busy pool was reported as a store outage"


async def test_stalled_history_keeps_each_senders_order(make_cluster, clients, tu) -> None:
    # History stops answering for 2.5 s, from before the first message is sent (so that appends
    # are surely in flight during the stall, however fast the cluster is). Appends have a 1 s
    # deadline, so the router fails the ones in flight as "unavailable" and the edge retries
    # them; the messages behind them must wait for them, not overtake them.
    # append_via=history: appends go through the history node that stalls.
    cluster = make_cluster(env={"SWITCHBOARD_RPC_TIMEOUT_S": "1", "SWITCHBOARD_APPEND_VIA": "history"})
    history = cluster.by_role("history")[0]

    async def stall() -> None:
        history.signal(signal.SIGSTOP)  # runs before the sending tasks start
        try:
            await asyncio.sleep(2.5)
        finally:
            history.signal(signal.SIGCONT)

    await _send_and_check(cluster, clients, tu, senders=4, per_sender=150, fault=stall)
    assert _log_lines(cluster, "router", "append_failed") > 0, "no append failed: the test proved nothing"


def _above(metrics: str, name: str, bound: str) -> int:
    """Observations of histogram `name` above the bucket bound `bound`."""
    def value(suffix: str) -> float:
        m = re.search(rf'^{name}{suffix} (\S+)$', metrics, re.M)
        assert m, f"{name}{suffix} not exported"
        return float(m.group(1))
    return int(value("_count") - value(rf'_bucket\{{le="{bound}"\}}'))


async def test_a_message_waiting_behind_its_connections_earlier_one_counts_that_wait(
        make_cluster, clients, sid, tu) -> None:
    # A connection has one unit of messages in flight: the second message waits on the edge
    # until the first is acknowledged. History stalls while the first is appended, so both wait
    # at least 0.6 s. The edge's publish duration and delivery latency must count that wait for
    # both messages, from when the edge read each one, not from when the second one left.
    stall_s = 0.6
    cluster = make_cluster(env={"SWITCHBOARD_APPEND_VIA": "history"})
    history = cluster.by_role("history")[0]
    c = clients(chat_url(cluster, 0, sid), token_for(cluster, "sender", [sid]), session_id=sid)
    await c.connect()
    history.signal(signal.SIGSTOP)
    try:
        await c.chat("first", message_id="m-first")
        await asyncio.sleep(stall_s / 3)  # the first one's unit is in flight: the second waits
        await c.chat("second", message_id="m-second")
        await asyncio.sleep(stall_s)
    finally:
        history.signal(signal.SIGCONT)
    events = await collect(c, 2, {"chat_message", "connection_error"}, 30 * tu)
    assert [e["payload"].get("content") for e in events] == ["first", "second"], events
    async with httpx.AsyncClient(timeout=10 * tu) as http:
        metrics = (await http.get(f"http://127.0.0.1:{cluster.by_role('edge')[0].port}/metrics")).text
    published = _above(metrics, "edge_publish_duration_seconds", "0.25")
    delivered = _above(metrics, "edge_delivery_latency_seconds", "0.25")
    assert (published, delivered) == (2, 2), "a message's wait on the edge was not counted"
