"""The browser wire protocol: client frames in, event envelopes out.

Client frames are JSON text: `{type, payload, timestamp}` or the same fields flat; camelCase
names from TripSage's documentation are accepted beside snake_case. Server events are
`{id, type, timestamp, payload, session_id?, user_id?, channel?, priority?, offset?, epoch?}`;
no value is ever `null` (absent keys are omitted) and only the auth reply has `success`.

An event is encoded once into its *body* (the envelope without offset and epoch) by whoever
creates it. `seal()` splices in offset and epoch by concatenation, so a durable event is never
re-encoded on its way to any number of subscribers.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

EVENT_TYPES = frozenset({
    "chat_message", "chat_message_chunk", "chat_message_complete", "chat_typing_start",
    "chat_typing_stop", "user_typing", "tool_call_start", "tool_call_progress",
    "tool_call_complete", "tool_call_error", "agent_status_update", "agent_task_start",
    "agent_task_progress", "agent_task_complete", "agent_error", "connection_established",
    "connection_error", "connection_heartbeat", "connection_close", "error", "notification",
    "system_message", "presence_join", "presence_leave",
    "subscribe_response", "recover_response", "history_response", "presence_response",
})
# Published events of these types skip history by default: they carry no offset.
EPHEMERAL_TYPES = frozenset({
    "chat_typing_start", "chat_typing_stop", "user_typing", "connection_heartbeat",
    "presence_join", "presence_leave",
})
# Default priority (1 high .. 3 low) per type; anything not listed is 2.
PRIORITY = {
    "error": 1, "connection_error": 1, "connection_close": 1, "connection_established": 1,
    "connection_heartbeat": 1, "agent_status_update": 1, "agent_error": 1, "tool_call_error": 1,
    "subscribe_response": 1, "recover_response": 1, "history_response": 1,
    "presence_response": 1, "system_message": 1,
    "chat_message_chunk": 3, "tool_call_progress": 3, "agent_task_progress": 3,
    "user_typing": 3, "chat_typing_start": 3, "chat_typing_stop": 3,
    "presence_join": 3, "presence_leave": 3,
}


class ProtocolError(Exception):
    """A client frame that cannot be understood. `code` goes to the client in an error event."""

    def __init__(self, message: str, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.code = code


_iso_cache: list[Any] = [-1, ""]  # (unix ms, its ISO text): events of one millisecond share it


def now_iso() -> str:
    ms = time.time_ns() // 1_000_000
    if ms != _iso_cache[0]:
        at = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        text = at.isoformat(timespec="milliseconds")
        _iso_cache[0], _iso_cache[1] = ms, text.replace("+00:00", "Z")
    return cast(str, _iso_cache[1])


class _Ids:
    """Event ids: 64 random bits per process (drawn again in a forked child), then a counter.
    32 hex characters like a uuid4's hex, unique across processes, without a random draw (a
    getrandom() syscall) per event; the idempotency window relies on their uniqueness."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4)))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)


def new_id() -> str:
    return _ids.next()


def priority_of(event_type: str) -> int:
    return PRIORITY.get(event_type, 2)


def encode_body(
    event_type: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    channel: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    priority: int | None = None,
    timestamp: str | None = None,
    clean: bool = False,
) -> bytes:
    """Encode an event envelope without offset/epoch. Keys with no value are omitted; `clean`:
    the payload holds no None anywhere (built by the edge itself), so it is not scanned."""
    env: dict[str, Any] = {
        "id": event_id or new_id(),
        "type": event_type,
        "timestamp": timestamp or now_iso(),
        "payload": payload if clean else _drop_nulls(payload),
    }
    if session_id:
        env["session_id"] = session_id
    if user_id:
        env["user_id"] = user_id
    if channel:
        env["channel"] = channel
    prio = priority if priority is not None else priority_of(event_type)
    if prio != 1:
        env["priority"] = prio
    return orjson.dumps(env)


def seal(body: bytes, offset: int, epoch: str) -> bytes:
    """The client frame of a durable event: body with offset and epoch spliced in."""
    return b"%s,\"offset\":%d,\"epoch\":\"%s\"}" % (body[:-1], offset, epoch.encode())


def encode(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(_drop_nulls(obj))


def _drop_nulls(value: Any) -> Any:
    # Recurses only into containers: a call per leaf was most of an edge's envelope encoding.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) if isinstance(v, (dict, list)) else v
                for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) if isinstance(v, (dict, list)) else v for v in value]
    return value


def valid_body(body: bytes) -> bool:
    return len(body) >= 2 and body[:1] == b"{" and body[-1:] == b"}"


# ---- client frames --------------------------------------------------------------------------

class _Frame(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class AuthFrame(_Frame):
    token: str = Field(min_length=1, max_length=8192)
    session_id: str | None = Field(None, validation_alias=AliasChoices("session_id", "sessionId"))
    channels: list[str] = Field(default_factory=list, max_length=100)
    recover: dict[str, RecoverPosition] | None = None


class RecoverPosition(_Frame):
    offset: int = Field(ge=0)
    epoch: str = Field(default="", max_length=64)


class ChatMessageFrame(_Frame):
    type: Literal["chat_message"]
    content: str = Field(max_length=32_000)
    attachments: list[dict[str, Any]] | None = Field(None, max_length=20)
    id: str | None = Field(
        None, max_length=128, validation_alias=AliasChoices("id", "message_id", "messageId"),
    )
    channel: str | None = None


class TypingFrame(_Frame):
    type: Literal["user_typing", "chat_typing_start", "chat_typing_stop"]
    is_typing: bool | None = Field(None, validation_alias=AliasChoices("is_typing", "isTyping"))
    channel: str | None = None


class SubscribeFrame(_Frame):
    type: Literal["subscribe"]
    channels: list[str] = Field(default_factory=list, max_length=100)
    unsubscribe_channels: list[str] = Field(
        default_factory=list, max_length=100,
        validation_alias=AliasChoices("unsubscribe_channels", "unsubscribeChannels"),
    )


class HeartbeatFrame(_Frame):
    type: Literal["heartbeat", "ping"]


class BatchFrame(_Frame):
    type: Literal["batch"]
    messages: list[dict[str, Any]] = Field(max_length=100)


class HistoryFrame(_Frame):
    type: Literal["history"]
    channel: str
    limit: int = Field(50, ge=1, le=1000)
    since: int | None = Field(None, ge=0)


class RecoverFrame(_Frame):
    type: Literal["recover"]
    channels: dict[str, RecoverPosition] = Field(max_length=100)


class PresenceFrame(_Frame):
    type: Literal["presence"]
    channel: str

    @field_validator("channel")
    @classmethod
    def _short(cls, v: str) -> str:
        if len(v) > 200:
            raise ValueError("channel name too long")
        return v


ClientFrame = (
    ChatMessageFrame | TypingFrame | SubscribeFrame | HeartbeatFrame | BatchFrame
    | HistoryFrame | RecoverFrame | PresenceFrame
)

_FRAME_MODELS: dict[str, type[_Frame]] = {
    "chat_message": ChatMessageFrame,
    "user_typing": TypingFrame, "chat_typing_start": TypingFrame, "chat_typing_stop": TypingFrame,
    "subscribe": SubscribeFrame,
    "heartbeat": HeartbeatFrame, "ping": HeartbeatFrame,
    "batch": BatchFrame,
    "history": HistoryFrame,
    "recover": RecoverFrame,
    "presence": PresenceFrame,
}


def load_json_object(text: str | bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError("malformed JSON", "malformed_json") from e
    if not isinstance(obj, dict):
        raise ProtocolError("a frame must be a JSON object", "invalid_message")
    return obj


def flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """Merge `{type, payload: {...}}` and flat frames into one dict (payload fields win)."""
    payload = obj.get("payload")
    flat = {k: v for k, v in obj.items() if k not in ("payload", "timestamp")}
    if isinstance(payload, dict):
        flat.update(payload)
    return flat


def parse_frame(obj: dict[str, Any]) -> ClientFrame:
    """Validate one client frame; raises ProtocolError with `unknown_type` or `invalid_message`."""
    flat = flatten(obj)
    kind = flat.get("type")
    model = _FRAME_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(f"unknown message type: {str(kind)[:64]}", "unknown_type")
    try:
        return model.model_validate(flat)  # type: ignore[return-value]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ProtocolError(f"invalid {kind}: {where} {first.get('msg', '')}".strip()) from e


def parse_auth(obj: dict[str, Any]) -> AuthFrame:
    """Accept `{token, ...}` untyped, or `{type: "auth", ...}` flat or under `payload`."""
    kind = obj.get("type")
    if kind is not None and kind != "auth":
        raise ProtocolError("the first frame must authenticate", "auth_required")
    try:
        return AuthFrame.model_validate(flatten(obj))
    except ValidationError as e:
        raise ProtocolError("invalid auth frame", "invalid_auth_frame") from e


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)
