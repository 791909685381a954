"""process_cpu_wait_seconds_total: the time a process's threads waited for a CPU, as the kernel
counts it, exported as a counter that never goes down."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.telemetry import CpuWaitCollector, RunDelay, new_registry
from tests.support.cpu import spinners_on_one_cpu


def waited(registry: CollectorRegistry) -> float:
    text = generate_latest(registry).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "process_cpu_wait_seconds"]
    assert family.type == "counter"
    [sample] = family.samples
    assert sample.name == "process_cpu_wait_seconds_total"
    return sample.value


def test_a_process_that_shares_its_cpu_with_two_others_waits_about_two_thirds_of_the_time() -> None:
    with spinners_on_one_cpu(3) as (spinner, *_):
        registry = CollectorRegistry()
        CpuWaitCollector(registry, pid=spinner.pid)
        t0, first = time.monotonic(), waited(registry)
        time.sleep(1.5)
        grown, elapsed = waited(registry) - first, time.monotonic() - t0
    # it runs about a third of the time and waits two thirds (more if anything else wants that
    # CPU); the time it ran, a third, would be under half
    assert elapsed / 2 < grown <= elapsed + 0.01, (grown, elapsed)


def test_what_an_ended_thread_waited_stays_counted_even_when_its_id_is_reused() -> None:
    delay = RunDelay()
    assert delay.update({"1": 10, "2": 5}) == 15
    assert delay.update({"1": 12}) == 17  # thread 2 ended: its 5 ns stay
    assert delay.update({"1": 12, "3": 1}) == 18
    assert delay.update({"1": 2, "3": 1}) == 20  # a new thread got id 1: the old one's 12 stay
    assert delay.update({}) == 20


def test_every_tiers_registry_exports_it_and_it_does_not_drop_when_a_thread_ends() -> None:
    registry = new_registry()
    before = waited(registry)
    t = threading.Thread(target=time.sleep, args=(0.05,))
    t.start()
    during = waited(registry)
    t.join()
    assert before <= during <= waited(registry)
