"""Fixtures shared by every suite. Each fixture closes what it creates."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support import time_unit
from tests.support.redis_server import RedisServer

# ---- time ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tu() -> float:
    """The time unit: multiply every test timeout by it (env SWITCHBOARD_TEST_TIME_SCALE)."""
    return time_unit()


# ---- keys ------------------------------------------------------------------------------------


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to this test, so tests share a store without flushing it."""
    return f"t-{uuid.uuid4().hex[:8]}"


# ---- redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (or SWITCHBOARD_TEST_REDIS_URL, which cannot restart).

    Tests that stop, kill or restart a server start their own `RedisServer` instead.
    """
    with RedisServer.from_env() as server:
        yield server
