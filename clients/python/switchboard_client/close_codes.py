"""Mirror of services/common/close_codes.py (the client ships without the server package;
tests/unit/test_close_codes.py checks that both tables agree)."""

NO_RECONNECT = frozenset({1000, 4001, 4003})


def should_reconnect(code: int) -> bool:
    return code not in NO_RECONNECT
