"""A log-bucketed latency histogram in microseconds, mergeable across worker processes.

Values below 64 µs have a bucket each; above, every power of two is split into 32 buckets, so a
quantile read from the histogram is at most about 3 % above the true value. Histograms travel
between processes as sparse `{bucket: count}` dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_SUB_BITS = 5
_SUB = 1 << _SUB_BITS  # buckets per power of two
_LINEAR = 2 * _SUB  # values below this have a bucket of their own
_MAX_US = 1 << 40  # about 12 days: anything above is clamped


def bucket_of(us: int) -> int:
    if us < _LINEAR:
        return max(us, 0)
    us = min(us, _MAX_US)
    shift = us.bit_length() - _SUB_BITS - 1
    return _LINEAR + (shift - 1) * _SUB + ((us >> shift) - _SUB)


def bucket_upper_us(bucket: int) -> int:
    """The largest value that falls in `bucket`."""
    if bucket < _LINEAR:
        return bucket
    shift = (bucket - _LINEAR) // _SUB + 1
    mantissa = (bucket - _LINEAR) % _SUB + _SUB
    return ((mantissa + 1) << shift) - 1


@dataclass
class Histogram:
    counts: dict[int, int] = field(default_factory=dict)
    max_us: int = 0

    def record(self, us: int) -> None:
        b = bucket_of(us)
        self.counts[b] = self.counts.get(b, 0) + 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.max_us = max(self.max_us, other.max_us)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def quantile_us(self, q: float) -> int | None:
        """The upper bound of the bucket holding the q-quantile (never above the maximum seen)."""
        total = self.count
        if not total:
            return None
        target = max(1, math.ceil(q * total))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= target:
                return min(bucket_upper_us(b), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float | None]:
        """p50, p99 and max in milliseconds (None when empty)."""
        def ms(us: int | None) -> float | None:
            return None if us is None else round(us / 1000, 3)
        empty = not self.counts
        return {"p50": ms(self.quantile_us(0.5)), "p99": ms(self.quantile_us(0.99)),
                "max": None if empty else ms(self.max_us)}
