"""The close-code contract: which codes exist and which make a client reconnect."""

from __future__ import annotations

import pytest

from services.common.close_codes import RULES, CloseCode, reason_of, should_reconnect

TERMINAL = {1000, 4001, 4003}
# The codes DESIGN.md documents (clients mirror these numbers).
DOCUMENTED = {1000, 1009, 1011, 1012, 1013, 4000, 4001, 4003, 4008, 4029}


def test_documented_codes_exist() -> None:
    assert {int(c) for c in CloseCode} >= DOCUMENTED


def test_every_code_has_a_rule_and_a_reason() -> None:
    assert set(RULES) == set(CloseCode)
    for code in CloseCode:
        assert reason_of(code)
        assert len(reason_of(code).encode()) <= 123  # a close reason must fit the close frame


@pytest.mark.parametrize("code", sorted(TERMINAL))
def test_terminal_codes_do_not_reconnect(code: int) -> None:
    assert should_reconnect(code) is False


@pytest.mark.parametrize("code", sorted(int(c) for c in CloseCode if int(c) not in TERMINAL))
def test_every_other_known_code_reconnects(code: int) -> None:
    assert should_reconnect(code) is True


@pytest.mark.parametrize("code", [1005, 1006, 1014, 3000, 4002, 4999, 0, 65535])
def test_unknown_codes_reconnect(code: int) -> None:
    assert should_reconnect(code) is True


def test_enum_members_are_accepted() -> None:
    assert should_reconnect(CloseCode.SLOW_CONSUMER) is True
    assert should_reconnect(CloseCode.FORBIDDEN) is False


def test_our_application_codes_are_in_the_private_range() -> None:
    assert all(4000 <= int(c) <= 4999 for c in CloseCode if int(c) >= 3000)
