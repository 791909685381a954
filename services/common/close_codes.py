"""The single written contract for WebSocket close codes.

Which codes Switchboard sends, what each means, and whether a client should reconnect
(with full-jitter backoff) or stop. The TypeScript and Python clients mirror this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_AUTH_FRAME = 4000
    AUTH_FAILED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029


@dataclass(frozen=True, slots=True)
class CloseRule:
    reason: str
    reconnect: bool


RULES: dict[CloseCode, CloseRule] = {
    CloseCode.NORMAL: CloseRule("normal closure", reconnect=False),
    CloseCode.GOING_AWAY: CloseRule("going away", reconnect=True),
    CloseCode.PROTOCOL_ERROR: CloseRule("protocol error", reconnect=True),
    CloseCode.UNSUPPORTED_DATA: CloseRule("unsupported data", reconnect=True),
    CloseCode.MESSAGE_TOO_BIG: CloseRule("frame too big", reconnect=True),
    CloseCode.INTERNAL_ERROR: CloseRule("internal error", reconnect=True),
    CloseCode.SERVICE_RESTART: CloseRule("service restart", reconnect=True),
    CloseCode.TRY_AGAIN_LATER: CloseRule("try again later", reconnect=True),
    CloseCode.BAD_AUTH_FRAME: CloseRule("bad or missing auth frame", reconnect=True),
    CloseCode.AUTH_FAILED: CloseRule("authentication failed", reconnect=False),
    CloseCode.FORBIDDEN: CloseRule("forbidden", reconnect=False),
    CloseCode.SLOW_CONSUMER: CloseRule("slow consumer", reconnect=True),
    CloseCode.RATE_LIMITED: CloseRule("rate limited", reconnect=True),
}


def should_reconnect(code: int) -> bool:
    """Reconnect on every code but 1000, 4001 and 4003 (unknown codes reconnect too)."""
    try:
        return RULES[CloseCode(code)].reconnect
    except ValueError:
        return True


def reason_of(code: CloseCode) -> str:
    return RULES[code].reason
