"""CPU and memory of server processes, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.telemetry import run_delays_ns

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ServerProcess:
    """One process of the measured cluster: `name` like edge-1, router-2, history-1, redis."""

    name: str
    pid: int

    @property
    def tier(self) -> str:
        return self.name.rsplit("-", 1)[0] if self.name[-1:].isdigit() and "-" in self.name else self.name


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: the fields after it start past the last ")".
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kb(pid: int) -> int | None:
    """VmRSS of the process in KiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_seconds(pid: int) -> float | None:
    """How long the process's live threads have waited for a CPU (runnable, not running), in
    seconds; None when it is gone or the kernel keeps no schedstat."""
    delays = run_delays_ns(pid)
    return None if delays is None else sum(delays.values()) / 1e9


def cpu_pressure_seconds() -> float | None:
    """The machine's CPU pressure so far: total time in which at least one runnable task waited
    for a CPU (/proc/pressure/cpu, "some"); None where the kernel has no PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return None
    return None


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot, every CPU and every process (the
    load generator's too), from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 6 or fields[0] != "cpu":  # idle and iowait are the 4th and 5th numbers
        return None
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    ticks = [int(x) for x in fields[1:9]]
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by each server process, and the machine's ticks; the seconds
    each process waited for a CPU, and the machine's CPU pressure (None: not known here)."""

    processes: dict[str, float]
    machine: tuple[int, int] | None
    waits: dict[str, float | None] = field(default_factory=dict)
    pressure_s: float | None = None


def cpu_snapshot(procs: list[ServerProcess]) -> CpuSnapshot:
    return CpuSnapshot({p.name: cpu_seconds(p.pid) or 0.0 for p in procs}, machine_ticks(),
                       {p.name: wait_seconds(p.pid) for p in procs}, cpu_pressure_seconds())


def share_pct(before: float | None, after: float | None, window_s: float) -> float | None:
    """Seconds accrued between two readings, in % of the window (None when either is unknown)."""
    if before is None or after is None or window_s <= 0:
        return None
    return round(100 * max(0.0, after - before) / window_s, 1)


def machine_busy_pct(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """How busy the whole machine was between two snapshots, in % of all its CPUs."""
    if before.machine is None or after.machine is None:
        return None
    total = after.machine[1] - before.machine[1]
    if total <= 0:
        return None
    return round(100 * (after.machine[0] - before.machine[0]) / total, 1)


def rss_snapshot(procs: list[ServerProcess]) -> dict[str, int]:
    return {p.name: rss_kb(p.pid) or 0 for p in procs}


def parse_pid_option(value: str) -> ServerProcess:
    """`name=PID` from the command line."""
    name, sep, pid = value.partition("=")
    if not sep or not name or not pid.isdigit():
        raise ValueError(f"expected NAME=PID, got {value!r}")
    return ServerProcess(name, int(pid))
