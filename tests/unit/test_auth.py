"""JWT verification and channel grants."""

from __future__ import annotations

import time

import jwt
import pytest

from services.common.auth import (
    AuthError,
    Principal,
    TokenVerifier,
    mint_token,
    normalize_channel,
    valid_id,
)
from services.edge.connection import warm_up

# Long enough for HS256 (PyJWT warns below 32 bytes, and warnings are errors here).
SECRET = "unit-test-secret-0123456789abcdef0123456789abcdef"
OTHER_SECRET = "another-secret-0123456789abcdef0123456789abcdef00"


def verify(token: object, *, allow_any_session: bool = False) -> Principal:
    return TokenVerifier(SECRET, allow_any_session=allow_any_session).verify(token)


def auth_code(token: object) -> str:
    with pytest.raises(AuthError) as info:
        verify(token)
    return info.value.code


# ---- tokens --------------------------------------------------------------------------------


def test_mint_and_verify_roundtrip() -> None:
    token = mint_token(SECRET, "user-1", sessions=["s1", "s2"], scopes=["publish", "read"])

    principal = verify(token)

    assert principal == Principal(
        user_id="user-1", sessions=frozenset({"s1", "s2"}), scopes=frozenset({"publish", "read"}),
    )


def test_minimal_token_has_no_sessions_or_scopes() -> None:
    principal = verify(mint_token(SECRET, "u"))

    assert principal.sessions == principal.scopes == frozenset()
    assert not principal.any_session


def test_scope_claim_may_be_a_list() -> None:
    token = jwt.encode({"sub": "u", "scope": ["publish"], "exp": int(time.time()) + 60}, SECRET)

    assert verify(token).scopes == frozenset({"publish"})


def test_expired_token() -> None:
    assert auth_code(mint_token(SECRET, "u", ttl_s=-60)) == "token_expired"


def test_small_clock_skew_is_tolerated() -> None:
    assert verify(mint_token(SECRET, "u", ttl_s=-2)).user_id == "u"


def test_wrong_secret() -> None:
    assert auth_code(mint_token(OTHER_SECRET, "u")) == "invalid_signature"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "x" * 5000])
def test_garbage_token(token: str) -> None:
    assert auth_code(token) == "invalid_token"


@pytest.mark.parametrize("token", [None, "", 42, b"bytes"])
def test_missing_token(token: object) -> None:
    assert auth_code(token) == "missing_token"


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, key=None, algorithm="none")

    assert auth_code(token) == "invalid_token"


@pytest.mark.parametrize("claims", [
    {},                                  # no sub
    {"sub": ""},
    {"sub": "bad id with spaces"},
    {"sub": "x" * 129},
    {"sub": "u", "sessions": "s1"},      # sessions must be a list
])
def test_invalid_claims(claims: dict[str, object]) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET)

    assert auth_code(token) == "invalid_token"


def test_a_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenVerifier("")


# ---- grants --------------------------------------------------------------------------------


def test_token_grants_own_user_and_agent_status_channels() -> None:
    principal = verify(mint_token(SECRET, "alice"))

    assert principal.may_access("user:alice")
    assert principal.may_access("agent_status:alice")
    assert not principal.may_access("user:bob")
    assert not principal.may_access("agent_status:bob")


def test_token_grants_the_sessions_in_its_claims() -> None:
    principal = verify(mint_token(SECRET, "alice", sessions=["s1"]))

    assert principal.may_join("s1")
    assert principal.may_access("session:s1")
    assert not principal.may_join("s2")
    assert not principal.may_access("session:s2")


@pytest.mark.parametrize(
    "channel", ["presence:alice", "alice", "", ":alice", "user", "users:alice"],
)
def test_other_channels_are_refused(channel: str) -> None:
    assert not verify(mint_token(SECRET, "alice", sessions=["s1"])).may_access(channel)


def test_chat_alias_normalises_to_session() -> None:
    principal = verify(mint_token(SECRET, "alice", sessions=["s1"]))

    assert normalize_channel("chat:s1") == "session:s1"
    assert principal.may_access(normalize_channel("chat:s1") or "")
    assert not principal.may_access(normalize_channel("chat:s2") or "")


@pytest.mark.parametrize(("name", "expected"), [
    ("session:s1", "session:s1"),
    ("chat:s-1_A", "session:s-1_A"),
    ("agent_status:u1", "agent_status:u1"),
    ("user:u1", "user:u1"),
    ("session:", None),
    ("session", None),
    ("session:a:b", None),
    ("session:a b", None),
    ("session:" + "x" * 129, None),
    ("room:r1", None),
    ("Session:s1", None),
])
def test_normalize_channel(name: str, expected: str | None) -> None:
    assert normalize_channel(name) == expected


def test_valid_id() -> None:
    assert valid_id("a") and valid_id("A-z_09") and valid_id("x" * 128)
    assert not valid_id("") and not valid_id("x" * 129) and not valid_id("a.b")
    assert not valid_id("a\n") and not valid_id("\u00e9")


def test_allow_any_session_grants_every_session_but_not_other_users() -> None:
    principal = verify(mint_token(SECRET, "alice"), allow_any_session=True)

    assert principal.any_session
    assert principal.may_join("anything")
    assert principal.may_access("session:whatever")
    assert not principal.may_access("user:bob")
    assert not principal.may_access("agent_status:bob")


# ---- the cache of verified tokens ----------------------------------------------------------


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, "user-1", sessions=["s1"], ttl_s=60)
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # the second time: from the cache

    later = time.time() + 60 + 6  # past exp and the 5 s leeway
    monkeypatch.setattr("services.common.auth.time.time", lambda: later)
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.code == "token_expired"
    assert token not in verifier._cache  # (PyJWT checks it again against its own clock)


def test_the_cache_vouches_only_for_the_exact_token() -> None:
    verifier = TokenVerifier(SECRET)
    token = mint_token(SECRET, "user-1", sessions=["s1"])
    verifier.verify(token)
    head, claims, sig = token.split(".")
    forged_claims = mint_token(OTHER_SECRET, "admin", sessions=["s1"]).split(".")[1]
    for bad, code in ((f"{head}.{forged_claims}.{sig}", "invalid_signature"),
                      (f"{head}.{claims}.{sig[:-4]}AAAA", "invalid_signature"),
                      (token + "x", "invalid_signature")):
        with pytest.raises(AuthError) as info:
            verifier.verify(bad)
        assert info.value.code == code, bad


def test_the_cache_is_bounded_and_can_be_off() -> None:
    tokens = [mint_token(SECRET, f"user-{i}") for i in range(5)]
    small = TokenVerifier(SECRET, cache_size=2)
    for token in tokens:
        small.verify(token)
    assert list(small._cache) == tokens[-2:]  # least recently used first out
    off = TokenVerifier(SECRET, cache_size=0)
    assert [off.verify(t).user_id for t in tokens] == [f"user-{i}" for i in range(5)]
    assert not off._cache


def test_the_edges_warm_up_runs_for_any_configured_algorithm() -> None:
    """An edge warms its auth path before it is ready; with a key it cannot sign for (an
    asymmetric algorithm) it still starts."""
    for algorithm in ("HS256", "HS512", "RS256", "ES256"):
        warm_up(algorithm)
