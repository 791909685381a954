"""The only place that maps a channel to an owner: rendezvous (highest-random-weight) hashing.

Adding a router moves the channels whose new highest weight is the new router, about 1/M of
them; removing one moves only that router's channels. Every node computes the same owner from
the same member set, with no coordination.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(key: str, nodes: Iterable[str]) -> str | None:
    """The node with the highest weight for key; None when there is no node."""
    best: str | None = None
    best_w = -1
    for node in nodes:
        w = _weight(node, key)
        if w > best_w or (w == best_w and best is not None and node > best):
            best, best_w = node, w
    return best


class OwnerCache:
    """`owner_of` per key for one node set, remembered until `reset()` (call it when the set
    changes). Bounded by emptying it when full: it only saves hashing."""

    __slots__ = ("_max", "_owners")

    def __init__(self, max_size: int = 100_000) -> None:
        self._owners: dict[str, str | None] = {}
        self._max = max_size

    def owner(self, key: str, nodes: Iterable[str]) -> str | None:
        try:
            return self._owners[key]
        except KeyError:
            if len(self._owners) >= self._max:
                self._owners.clear()
            owner = self._owners[key] = owner_of(key, nodes)
            return owner

    def reset(self) -> None:
        self._owners.clear()
