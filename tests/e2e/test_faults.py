"""Fault injection against real processes: nothing acknowledged is lost, nothing is delivered
twice, order is kept, while any single process dies, restarts or stalls.

Each test prints one line `FAULT scenario=… published=… delivered=… lost=… …` (run with -s).
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.e2e.faultkit import Scenario

PER_SESSION = 150


def _print(name: str, report, **extra: object) -> None:
    fields = " ".join(f"{k}={v}" for k, v in {**vars(report), **extra}.items() if k != "details")
    print(f"\nFAULT scenario={name} {fields}")


async def _run(cluster, tu, fault, name: str, *, per_session: int = PER_SESSION, **kw):
    sc = Scenario(cluster, tu=tu, **kw)
    try:
        await sc.start_subscribers()
        sc.start_publishing(per_session)
        await asyncio.sleep(0.5 * tu)
        extra = await fault(sc) or {}
        await sc.wait_published()
        report = await sc.verify()
        _print(name, report, **extra)
        report.assert_clean()
        return sc, report
    finally:
        await sc.aclose()


async def test_kill_edge(make_cluster, tu) -> None:
    cluster = make_cluster(edges=3, routers=2)

    async def fault(sc):
        victim = cluster.by_role("edge")[1]
        victim.kill()
        await asyncio.sleep(1.0 * tu)
        return {"killed": victim.name}

    sc, _report = await _run(cluster, tu, fault, "kill-9-edge")
    reconnected = [s for s in sc.subscribers if s.client.connects > 1]
    assert reconnected, "no subscriber was on the killed edge"


async def test_kill_router_then_new_router_joins(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=3)

    async def fault(sc):
        victim = cluster.by_role("router")[0]
        killed_at = time.monotonic()
        victim.kill()
        await asyncio.sleep(2.0 * tu)
        new = cluster.spawn("router")
        cluster.wait_ready(new)
        return {"killed": victim.name, "joined": new.name,
                "join_s": round(time.monotonic() - killed_at, 2)}

    await _run(cluster, tu, fault, "kill-9-router+join", per_session=300)


@pytest.mark.parametrize("append_via", ["store", "history"])
async def test_kill_and_restart_history(make_cluster, tu, append_via) -> None:
    # store: history is off the write path; history: its outage fails appends, which are retried
    cluster = make_cluster(edges=2, routers=2, env={"SWITCHBOARD_APPEND_VIA": append_via})

    async def fault(sc):
        history = cluster.by_role("history")[0]
        history.kill()
        await asyncio.sleep(1.0 * tu)
        cluster.restart(history)
        return {"restarted": history.name}

    await _run(cluster, tu, fault, f"kill-9-history+restart append_via={append_via}")


async def test_store_restart_keeping_its_data(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=2)

    async def fault(sc):
        cluster.stop_store(save=True)
        await asyncio.sleep(1.0 * tu)
        cluster.start_store_again()
        return {}

    sc, _ = await _run(cluster, tu, fault, "store-restart-with-data")
    # the epoch survived: a client reconnecting now recovers every channel
    sub = sc.subscribers[0]
    assert not sub.client.unrecovered


async def test_store_restart_losing_its_data_says_recovered_false(make_cluster, clients, tu) -> None:
    cluster = make_cluster(edges=2, routers=2)
    sc = Scenario(cluster, tu=tu, sessions=1)
    try:
        await sc.start_subscribers(per_session=1)
        sc.start_publishing(40)
        await sc.wait_published()
        report = await sc.verify()
        report.assert_clean()
        sub = sc.subscribers[0]
        before = dict(sub.client.positions)
        cluster.stop_store(save=False)
        cluster.start_store_again()
        # Force a reconnect: the client sends its positions, whose epoch no longer exists.
        edge_of_sub = next(p for p in cluster.by_role("edge") if str(p.port) in sub.client.url)
        cluster.restart(edge_of_sub, kill=True)
        deadline = time.monotonic() + 20 * tu
        while sub.client.connects < 2 or not sub.client.unrecovered:
            assert time.monotonic() < deadline, "client did not reconnect and report the loss"
            await asyncio.sleep(0.1)
        assert set(sub.client.unrecovered) == set(before) and before
        _print("store-restart-without-data", report, unrecovered=sorted(sub.client.unrecovered))
    finally:
        await sc.aclose()


async def test_sigterm_edge_drains_with_1012(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=2)

    async def fault(sc):
        victim = cluster.by_role("edge")[0]
        started = time.monotonic()
        victim.stop()
        return {"drained": victim.name, "exit_s": round(time.monotonic() - started, 2)}

    sc, _ = await _run(cluster, tu, fault, "sigterm-edge")
    codes = [c for s in sc.subscribers for c in s.client.close_codes]
    assert 1012 in codes, codes


async def test_sigterm_router_hands_channels_over(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=2)

    async def fault(sc):
        victim = cluster.by_role("router")[0]
        started = time.monotonic()
        victim.stop()
        return {"drained": victim.name, "exit_s": round(time.monotonic() - started, 2)}

    await _run(cluster, tu, fault, "sigterm-router")


async def test_router_stalls_then_resumes(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=3)

    async def fault(sc):
        victim = cluster.by_role("router")[1]
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(3.0 * tu)
        victim.signal(signal.SIGCONT)
        return {"stalled": victim.name, "stall_s": 3.0}

    await _run(cluster, tu, fault, "sigstop-router-3s", per_session=300)


async def test_history_stalls_then_resumes(make_cluster, tu) -> None:
    cluster = make_cluster(edges=2, routers=2)

    async def fault(sc):
        history = cluster.by_role("history")[0]
        history.signal(signal.SIGSTOP)
        await asyncio.sleep(3.0 * tu)
        history.signal(signal.SIGCONT)
        return {"stalled": history.name, "stall_s": 3.0}

    await _run(cluster, tu, fault, "sigstop-history-3s")
