"""The pure parts of `switchboard bench`: latency histograms and the placement of connections."""

from __future__ import annotations

import random
import subprocess
import time

import pytest

from services.bench.histogram import Histogram, bucket_of, bucket_upper_us
from services.bench.procstats import CpuSnapshot, cpu_pressure_seconds, machine_busy_pct, share_pct, wait_seconds
from services.bench.report import busy_note, loadgen_lag_note, loadgen_saturated_note, wait_note, wait_table
from services.bench.scenarios import Plan, p99_ms
from services.bench.target import histogram_buckets
from tests.support.cpu import spinners_on_one_cpu


def test_every_value_falls_in_a_bucket_whose_bound_is_at_most_a_thirtysecond_above_it() -> None:
    rnd = random.Random(7)
    for v in [*range(300), *(rnd.randrange(1, 10**10) for _ in range(5000))]:
        b = bucket_of(v)
        assert bucket_upper_us(b) >= v > (bucket_upper_us(b - 1) if b else -1)
        assert bucket_upper_us(b) <= v + v / 32 + 1


def test_merged_histograms_give_the_quantiles_of_all_values() -> None:
    a, b = Histogram(), Histogram()
    for v in range(1, 901):
        a.record(v * 100)  # 0.1 .. 90 ms
    for v in range(901, 1001):
        b.record(v * 100)  # 90.1 .. 100 ms: the slowest tenth, in another worker
    a.merge(b)
    assert a.count == 1000 and a.max_us == 100_000
    p50, p99 = a.quantile_us(0.5), a.quantile_us(0.99)
    assert p50 is not None and 50_000 <= p50 <= 50_000 * 33 / 32
    assert p99 is not None and 99_000 <= p99 <= 100_000
    assert a.summary_ms()["max"] == 100.0
    assert Histogram().summary_ms() == {"p50": None, "p99": None, "max": None}


def test_every_session_spans_the_edges_and_publishers_are_spread_over_them() -> None:
    plan = Plan(clients=2000, rooms=100, edges=2, publishers=100, workers=2)
    assert plan.spans_edges() == 100
    assert len(set(plan.cid_of_publisher)) == 100
    assert [plan.edge_of[c] for c in plan.cid_of_publisher].count(0) == 50
    assert all(len(pubs) == 1 for pubs in plan.room_publishers)
    assert all(plan.room_of[plan.cid_of_publisher[j]] == j % 100 for j in range(100))


def test_session_placement_keeps_each_session_on_one_edge_and_the_sessions_over_the_edges() -> None:
    plan = Plan(clients=2000, rooms=100, edges=2, publishers=100, workers=2, placement="session")
    assert plan.spans_edges() == 0
    edge_of_room = {plan.room_of[c]: plan.edge_of[c] for c in range(2000)}
    assert all(plan.edge_of[c] == edge_of_room[plan.room_of[c]] for c in range(2000))
    assert sorted(edge_of_room.values()).count(0) == 50  # half the sessions on each edge
    assert plan.room_of == Plan(clients=2000, rooms=100, edges=2, publishers=100, workers=2).room_of
    assert all(len(pubs) == 1 for pubs in plan.room_publishers)
    with pytest.raises(ValueError):
        Plan(clients=8, rooms=4, edges=2, publishers=4, workers=1, placement="random")


def test_a_plan_refuses_more_publishers_than_members() -> None:
    with pytest.raises(ValueError):
        Plan(clients=8, rooms=4, edges=2, publishers=12, workers=1)


def test_the_machine_busy_share_is_of_all_cpus_between_two_snapshots_and_flags_saturated_steps() -> None:
    before = CpuSnapshot({}, (1_000, 10_000))
    assert machine_busy_pct(before, CpuSnapshot({}, (1_950, 11_000))) == 95.0
    assert machine_busy_pct(before, CpuSnapshot({}, (1_300, 11_000))) == 30.0
    assert machine_busy_pct(before, CpuSnapshot({}, None)) is None  # no /proc/stat
    assert machine_busy_pct(before, before) is None  # no time passed
    steps = [{"k": 1, "servers": {"machine_busy_pct": 30.0}}, {"k": 2, "servers": {"machine_busy_pct": 95.0}},
             {"k": 3, "servers": {"machine_busy_pct": None}}]
    note = busy_note(steps, "step")
    assert note is not None and note.endswith("in step 2: latency there includes waiting for a core")
    assert busy_note(steps[:1], "step") is None


def test_steps_whose_load_generator_read_late_are_named_with_its_lag() -> None:
    steps = [{"k": 1, "loadgen_loop_lag_ms": {"p99": 1.2}}, {"k": 2, "loadgen_loop_lag_ms": {"p99": 31.5}},
             {"k": 3, "loadgen_loop_lag_ms": {"p99": None}}]
    note = loadgen_lag_note(steps)
    assert note is not None and "in step 2 (31.5 ms):" in note and "1.2" not in note
    assert loadgen_lag_note(steps[:1]) is None


def test_three_processes_on_one_cpu_each_wait_for_it_and_a_sleeping_one_does_not() -> None:
    pressure0 = cpu_pressure_seconds()
    sleeper = subprocess.Popen(["sleep", "20"])
    try:
        t0 = time.monotonic()
        with spinners_on_one_cpu(3) as spinners:
            time.sleep(1.5)
            waits = [wait_seconds(p.pid) for p in spinners]
            slept = wait_seconds(sleeper.pid)
            pressure1 = cpu_pressure_seconds()
            alive = time.monotonic() - t0  # at most this long each
    finally:
        sleeper.kill()
        sleeper.wait()
    # each runs about a third of the time and waits two thirds (more if anything else wants the
    # CPU); the time it ran, a third, would be under half
    assert all(w is not None and alive / 2 < w <= alive for w in waits), (waits, alive)
    assert slept is not None and slept < 0.25
    if pressure0 is not None:  # a kernel with PSI: something waited for a CPU all along
        assert pressure1 is not None and pressure1 - pressure0 > 0.3
    assert wait_seconds(spinners[0].pid) is None  # gone (and reaped)


def test_the_share_of_a_step_spent_waiting_is_named_where_a_server_process_waited_long() -> None:
    assert share_pct(2.0, 2.5, 10.0) == 5.0
    assert share_pct(None, 2.5, 10.0) is None and share_pct(2.0, 2.5, 0.0) is None

    def step(k: int, waits: dict[str, float | None]) -> dict[str, object]:
        return {"k": k, "latency_ms": {"p99": 40.0}, "loadgen_wait_pct": 30.0, "loadgen_cpu_pct": 50.0,
                "servers": {"machine_cpu_pressure_pct": 60.0,
                            "processes": [{"name": n, "wait_pct": w} for n, w in waits.items()]}}

    steps = [step(1, {"edge-1": 2.0, "router-1": 1.0}), step(2, {"edge-1": 41.5, "router-1": 12.0}),
             step(3, {"edge-1": None, "router-1": None})]
    note = wait_note(steps)
    assert note is not None and "of step 2 (edge-1 41.5 %):" in note
    assert wait_note(steps[:1]) is None and wait_note(steps[2:]) is None
    table = wait_table(steps)
    assert table is not None and "edge-1 wait" in table and "gen wait" in table and "41.5" in table
    assert wait_table(steps[2:]) is None  # nothing was read: no table


def test_steps_whose_load_generator_could_not_keep_up_are_named() -> None:
    steps = [{"k": 1, "loadgen_cpu_pct": 40.0, "loadgen_wait_pct": 20.0},
             {"k": 2, "loadgen_cpu_pct": 63.0, "loadgen_wait_pct": 35.5},
             {"k": 3, "loadgen_cpu_pct": 70.0, "loadgen_wait_pct": None}]
    note = loadgen_saturated_note(steps)
    assert note is not None and "of step 2 (63.0 % on a CPU + 35.5 % waiting for one):" in note
    assert "step 1" not in note and "3 (" not in note
    assert loadgen_saturated_note(steps[:1]) is None


def test_a_servers_p99_is_read_from_the_buckets_it_exported_between_two_scrapes() -> None:
    text = "\n".join([
        "# HELP event_loop_lag_seconds lag", "# TYPE event_loop_lag_seconds histogram",
        *(f'event_loop_lag_seconds_bucket{{le="{le}"}} {n}' for le, n in
          (("0.001", 90.0), ("0.01", 95.0), ("0.1", 195.0), ("+Inf", 196.0))),
        "event_loop_lag_seconds_count 196.0", "event_loop_lag_seconds_sum 3.0",
        "# HELP edge_delivery_latency_seconds d", "# TYPE edge_delivery_latency_seconds histogram",
        'edge_delivery_latency_seconds_bucket{le="0.025"} 7.0', 'edge_delivery_latency_seconds_bucket{le="+Inf"} 7.0',
        "edge_delivery_latency_seconds_count 7.0", "edge_delivery_latency_seconds_sum 0.01",
        "# HELP other_seconds o", "# TYPE other_seconds histogram", 'other_seconds_bucket{le="+Inf"} 1.0',
        "other_seconds_count 1.0", "other_seconds_sum 1.0", ""])
    got = histogram_buckets(text)
    assert set(got) == {"event_loop_lag_seconds", "edge_delivery_latency_seconds"}  # what a step reads
    after = got["event_loop_lag_seconds"]
    assert after == {0.001: 90.0, 0.01: 95.0, 0.1: 195.0, float("inf"): 196.0}
    assert p99_ms({}, got["edge_delivery_latency_seconds"]) == 25.0
    before = {0.001: 90.0, 0.01: 94.0, 0.1: 94.0, float("inf"): 94.0}
    # in between: 102 observations, 1 under 10 ms, 100 more under 100 ms, 1 beyond: p99 is under 0.1 s
    assert p99_ms(before, after) == 100.0
    assert p99_ms({}, {0.001: 99.0, 0.01: 99.0, float("inf"): 100.0}) == 1.0
    assert p99_ms(after, after) is None  # nothing observed in between
    assert p99_ms({}, {0.001: 0.0, 0.01: 0.0, float("inf"): 3.0}) == 10.0  # beyond: the last bound
