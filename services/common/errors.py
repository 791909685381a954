"""The single table of error codes that cross a process boundary.

A code travels in a router's PublishAck, in a `connection_error` or `error` event, and in the
HTTP API's `{error, code}` bodies. The table says whether the caller should retry the same
request (with the same event id, so it is stored once) and which HTTP status the edge answers.
Clients mirror the `retryable` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID = "invalid"          # the request itself is wrong: do not retry
    FORBIDDEN = "forbidden"      # not allowed: do not retry
    UNAVAILABLE = "unavailable"  # no router/history/store answered: retry later
    TIMEOUT = "timeout"          # not acknowledged within the publish deadline: retry
    BUSY = "busy"                # the store's connection pool stayed full: retry
    OVERLOADED = "overloaded"    # a channel's publish queue is full: retry after a pause
    INTERNAL = "internal"        # a bug or an unexpected store error: do not retry blindly


@dataclass(frozen=True, slots=True)
class ErrorRule:
    retryable: bool
    http_status: int


RULES: dict[ErrorCode, ErrorRule] = {
    ErrorCode.INVALID: ErrorRule(retryable=False, http_status=400),
    ErrorCode.FORBIDDEN: ErrorRule(retryable=False, http_status=403),
    ErrorCode.UNAVAILABLE: ErrorRule(retryable=True, http_status=503),
    ErrorCode.TIMEOUT: ErrorRule(retryable=True, http_status=504),
    ErrorCode.BUSY: ErrorRule(retryable=True, http_status=503),
    ErrorCode.OVERLOADED: ErrorRule(retryable=True, http_status=503),
    ErrorCode.INTERNAL: ErrorRule(retryable=False, http_status=500),
}


def rule_of(code: str) -> ErrorRule:
    """The rule of a code; an unknown code (a newer peer) is treated as internal."""
    try:
        return RULES[ErrorCode(code)]
    except ValueError:
        return RULES[ErrorCode.INTERNAL]


def is_retryable(code: str) -> bool:
    return rule_of(code).retryable
