"""JWT verification and channel grants.

A token is HS256-signed with the shared secret. Claims: `sub` (the user id), `sessions`
(the chat sessions the user may join), `scope` (space-separated or a list; `publish`
allows the HTTP publish API), `exp`. Verification never logs the token.

A verified token is remembered (bounded LRU, like Envoy's JWT cache): the same token again (a
reconnect, another tab, a storm of reconnects to the same edge) costs a dictionary look-up and
its expiry check instead of a signature and claims check. Only successful verifications are
kept; time only moves forward, so of the time claims only `exp` can turn a cached token invalid.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")  # \Z: "$" would also match before a final "\n"
CHANNEL_KINDS = ("session", "agent_status", "user")
CHANNEL_ALIASES = {"chat": "session"}


class AuthError(Exception):
    """The token is missing, malformed, expired or wrongly signed."""

    def __init__(self, message: str, code: str = "invalid_token") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    sessions: frozenset[str]
    scopes: frozenset[str]
    any_session: bool = False

    def may_join(self, session_id: str) -> bool:
        return self.any_session or session_id in self.sessions

    def may_access(self, channel: str) -> bool:
        kind, _, ident = channel.partition(":")
        if kind == "session":
            return self.may_join(ident)
        if kind in ("agent_status", "user"):
            return ident == self.user_id
        return False


def valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))


def normalize_channel(name: str) -> str | None:
    """`chat:X` -> `session:X`; None when the name is not a valid channel."""
    kind, sep, ident = name.partition(":")
    kind = CHANNEL_ALIASES.get(kind, kind)
    if not sep or kind not in CHANNEL_KINDS or not valid_id(ident):
        return None
    return f"{kind}:{ident}"


LEEWAY_S = 5


class TokenVerifier:
    def __init__(self, secret: str, algorithm: str = "HS256", *, allow_any_session: bool = False,
                 cache_size: int = 10_000):
        if not secret:
            raise ValueError("a JWT secret is required")
        self._secret = secret
        self._algorithm = algorithm
        self._allow_any = allow_any_session
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()  # token -> (principal, exp)

    def verify(self, token: object) -> Principal:
        """Return the token's principal; raises AuthError with a machine-readable code."""
        if not isinstance(token, str) or not token:
            raise AuthError("token missing", "missing_token")
        hit = self._cache.get(token)
        if hit is not None:
            principal, exp = hit
            if time.time() < exp + LEEWAY_S:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
            raise AuthError("token expired", "token_expired")
        principal, exp = self._decode(token)
        if self._cache_size > 0:
            self._cache[token] = (principal, exp)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[self._algorithm],
                options={"require": ["sub"]}, leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthError("token expired", "token_expired") from e
        except jwt.InvalidSignatureError as e:
            raise AuthError("invalid token signature", "invalid_signature") from e
        except jwt.PyJWTError as e:
            raise AuthError("invalid token", "invalid_token") from e
        sub = claims.get("sub")
        if not isinstance(sub, str) or not valid_id(sub):
            raise AuthError("invalid subject", "invalid_token")
        sessions = claims.get("sessions") or []
        if not isinstance(sessions, list):
            raise AuthError("invalid sessions claim", "invalid_token")
        exp = claims.get("exp")
        principal = Principal(
            user_id=sub,
            sessions=frozenset(str(s) for s in sessions),
            scopes=frozenset(_scopes(claims.get("scope"))),
            any_session=self._allow_any,
        )
        return principal, float(exp) if exp is not None else float("inf")


def _scopes(raw: object) -> Iterable[str]:
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return (str(s) for s in raw)
    return ()


def mint_token(
    secret: str, sub: str, *, sessions: Iterable[str] = (), scopes: Iterable[str] = (),
    ttl_s: float = 3600.0, algorithm: str = "HS256",
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "iat": now, "exp": now + int(ttl_s)}
    if sessions:
        claims["sessions"] = list(sessions)
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, secret, algorithm=algorithm)
