"""Per-connection flood control: a token bucket over client messages."""

from __future__ import annotations

import time


class TokenBucket:
    """`rate_per_s` tokens per second, at most `burst` saved up. Not thread-safe (one loop)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self, n: int = 1) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False
