"""Lock-free histograms scrape like prometheus-client's own: cumulative buckets, +Inf equal to the
count, the sum, one series per label values, and zeros from the start when unlabelled."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.telemetry import LoopHistograms, loop_lag_metric


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == name]
    assert family.type == "histogram"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_buckets_are_cumulative_and_inf_is_the_count() -> None:
    registry = CollectorRegistry()
    h = LoopHistograms("x_seconds", "doc", buckets=(0.01, 0.1, 1.0), registry=registry).labels()
    for v in (0.005, 0.01, 0.05, 0.5, 7.0):  # a value equal to a bound counts in that bucket
        h.observe(v)
    got = samples(registry, "x_seconds")
    assert got[("x_seconds_bucket", (("le", "0.01"),))] == 2
    assert got[("x_seconds_bucket", (("le", "0.1"),))] == 3
    assert got[("x_seconds_bucket", (("le", "1.0"),))] == 4
    assert got[("x_seconds_bucket", (("le", "+Inf"),))] == 5
    assert got[("x_seconds_count", ())] == 5
    assert got[("x_seconds_sum", ())] == pytest.approx(7.565)


def test_an_unlabelled_histogram_is_exported_at_zero_before_any_observation() -> None:
    registry = CollectorRegistry()
    LoopHistograms("idle_seconds", "doc", buckets=(1.0,), registry=registry)
    got = samples(registry, "idle_seconds")
    assert got[("idle_seconds_count", ())] == 0 and got[("idle_seconds_bucket", (("le", "+Inf"),))] == 0


def test_labelled_children_are_separate_series_and_time_observes_a_duration() -> None:
    registry = CollectorRegistry()
    family = LoopHistograms("op_seconds", "doc", ["outcome"], buckets=(10.0,), registry=registry)
    family.labels("ok").observe(1.0)
    family.labels("ok").observe(2.0)
    with family.labels("error").time():
        pass
    got = samples(registry, "op_seconds")
    assert got[("op_seconds_count", (("outcome", "ok"),))] == 2
    assert got[("op_seconds_sum", (("outcome", "ok"),))] == 3.0
    assert got[("op_seconds_count", (("outcome", "error"),))] == 1
    assert 0 <= got[("op_seconds_sum", (("outcome", "error"),))] < 1.0
    with pytest.raises(ValueError):
        family.labels("ok", "extra")


async def test_loop_lag_reports_a_loop_that_a_callback_held_and_stops_when_closed() -> None:
    registry = CollectorRegistry()
    lag = loop_lag_metric(registry, interval_s=0.02)  # the tier's histogram, sampled faster
    lag.start()
    await asyncio.sleep(0.1)  # timers run about on time
    before = samples(registry, "event_loop_lag_seconds")
    assert before[("event_loop_lag_seconds_count", ())] >= 2
    time.sleep(0.3)  # a callback that does not yield: the next timer runs 0.28 s or more late
    await asyncio.sleep(0.05)
    got = samples(registry, "event_loop_lag_seconds")
    late = got[("event_loop_lag_seconds_count", ())] - got[("event_loop_lag_seconds_bucket", (("le", "0.25"),))]
    assert late == 1, got  # exactly the one timer that came due while the loop was held
    lag.close()
    count = got[("event_loop_lag_seconds_count", ())]
    await asyncio.sleep(0.1)
    assert samples(registry, "event_loop_lag_seconds")[("event_loop_lag_seconds_count", ())] == count
