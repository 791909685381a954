"""The browser wire protocol: event envelopes out, client frames in."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import orjson
import pytest

from services.common.wire import (
    EPHEMERAL_TYPES,
    EVENT_TYPES,
    PRIORITY,
    AuthFrame,
    BatchFrame,
    ChatMessageFrame,
    HeartbeatFrame,
    HistoryFrame,
    PresenceFrame,
    ProtocolError,
    RecoverFrame,
    RecoverPosition,
    SubscribeFrame,
    TypingFrame,
    encode,
    encode_body,
    load_json_object,
    new_id,
    now_iso,
    parse_auth,
    parse_frame,
    priority_of,
    seal,
    valid_body,
)

# The event types DESIGN.md lists, replies included.
DOCUMENTED_TYPES = {
    "chat_message", "chat_message_chunk", "chat_message_complete", "chat_typing_start",
    "chat_typing_stop", "user_typing", "tool_call_start", "tool_call_progress",
    "tool_call_complete", "tool_call_error", "agent_status_update", "agent_task_start",
    "agent_task_progress", "agent_task_complete", "agent_error", "connection_established",
    "connection_error", "connection_heartbeat", "connection_close", "error", "notification",
    "system_message", "presence_join", "presence_leave",
    "subscribe_response", "recover_response", "history_response", "presence_response",
}


def decode(raw: bytes) -> dict[str, Any]:
    obj = orjson.loads(raw)
    assert isinstance(obj, dict)
    return obj


# ---- event types ---------------------------------------------------------------------------


def test_event_types_are_the_documented_ones() -> None:
    assert EVENT_TYPES == DOCUMENTED_TYPES


def test_ephemeral_and_priority_tables_name_known_types() -> None:
    assert EPHEMERAL_TYPES <= EVENT_TYPES
    assert set(PRIORITY) <= EVENT_TYPES
    assert set(PRIORITY.values()) <= {1, 2, 3}


def test_priority_of_defaults_to_two() -> None:
    assert priority_of("error") == 1
    assert priority_of("chat_message_chunk") == 3
    assert priority_of("chat_message") == 2
    assert priority_of("not_a_type") == 2


# ---- encode_body / seal --------------------------------------------------------------------


def test_encode_body_has_the_envelope_and_omits_absent_keys() -> None:
    env = decode(encode_body("chat_message", {"content": "hi"}))

    assert set(env) == {"id", "type", "timestamp", "payload", "priority"}
    assert env["type"] == "chat_message"
    assert env["payload"] == {"content": "hi"}
    assert env["priority"] == 2
    assert env["id"]
    assert b"null" not in encode_body("chat_message", {"content": "hi"})


def test_encode_body_uses_given_fields() -> None:
    env = decode(encode_body(
        "chat_message", {"content": "hi"}, event_id="ev-1", channel="session:s1",
        session_id="s1", user_id="u1", timestamp="2025-01-02T03:04:05.678Z",
    ))

    assert env == {
        "id": "ev-1", "type": "chat_message", "timestamp": "2025-01-02T03:04:05.678Z",
        "payload": {"content": "hi"}, "session_id": "s1", "user_id": "u1",
        "channel": "session:s1", "priority": 2,
    }


def test_encode_body_drops_nulls_inside_the_payload() -> None:
    payload = {"tool": "search", "args": None, "nested": {"a": None, "b": [1, {"c": None}]}}
    raw = encode_body("tool_call_start", payload)

    assert b"null" not in raw
    assert decode(raw)["payload"] == {"tool": "search", "nested": {"b": [1, {}]}}


def test_a_clean_payload_is_encoded_as_it_is() -> None:
    payload = {"connection_id": "c1", "channels": ["session:s1", "user:u1"]}
    assert decode(encode_body("connection_established", payload, clean=True))["payload"] == payload


def test_priority_is_omitted_when_one() -> None:
    assert "priority" not in decode(encode_body("error", {"message": "x"}))  # default 1
    assert "priority" not in decode(encode_body("chat_message", {}, priority=1))  # explicit 1
    assert decode(encode_body("chat_message_chunk", {"content": "t"}))["priority"] == 3
    assert decode(encode_body("error", {}, priority=3))["priority"] == 3


def test_seal_splices_offset_and_epoch_into_valid_json() -> None:
    payload = {"content": "h\u00e9llo", "meta": {"k": [1, 2]}}
    body = encode_body("chat_message", payload, event_id="e1")

    sealed = decode(seal(body, 42, "ep-abc"))

    assert sealed == {**decode(body), "offset": 42, "epoch": "ep-abc"}


def test_seal_reuses_one_body_for_many_offsets() -> None:
    body = encode_body("chat_message", {"content": "x"})

    assert [decode(seal(body, n, "E"))["offset"] for n in (1, 2, 10**12)] == [1, 2, 10**12]
    assert decode(body).keys().isdisjoint({"offset", "epoch"})


def test_encode_drops_nulls_and_valid_body() -> None:
    assert decode(encode({"success": True, "error": None, "list": [None, {"x": None}]})) == {
        "success": True, "list": [None, {}],
    }
    assert valid_body(b'{"a":1}')
    assert not valid_body(b"{")
    assert not valid_body(b"[1]")
    assert not valid_body(b"")


def test_now_iso_is_utc_with_milliseconds() -> None:
    stamp = now_iso()

    assert stamp.endswith("Z")
    assert len(stamp.split(".")[1]) == 4  # three digits and the Z
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).utcoffset() is not None


def test_now_iso_is_the_current_millisecond_though_one_text_serves_a_millisecond() -> None:
    for _ in range(2000):  # crosses many millisecond ticks
        before = time.time_ns() // 1_000_000
        stamp = datetime.fromisoformat(now_iso().replace("Z", "+00:00"))
        after = time.time_ns() // 1_000_000
        ms = int(stamp.timestamp() * 1000 + 0.5)
        assert before <= ms <= after, (before, stamp, after)


# ---- client frames -------------------------------------------------------------------------


def test_wrapped_and_flat_frames_parse_alike() -> None:
    wrapped = parse_frame({
        "type": "chat_message", "payload": {"content": "hi", "attachments": [{"url": "u"}]},
        "timestamp": "2025-01-01T00:00:00Z",
    })
    flat = parse_frame({"type": "chat_message", "content": "hi", "attachments": [{"url": "u"}]})

    assert wrapped == flat == ChatMessageFrame(
        type="chat_message", content="hi", attachments=[{"url": "u"}], id=None,
    )


def test_payload_fields_win_over_flat_ones() -> None:
    frame = parse_frame(
        {"type": "chat_message", "content": "flat", "payload": {"content": "inner"}},
    )

    assert isinstance(frame, ChatMessageFrame)
    assert frame.content == "inner"


def test_subscribe_accepts_camel_case_unsubscribe_channels() -> None:
    camel = parse_frame({
        "type": "subscribe",
        "payload": {"channels": ["session:a"], "unsubscribeChannels": ["user:u"]},
    })
    snake = parse_frame({
        "type": "subscribe", "channels": ["session:a"], "unsubscribe_channels": ["user:u"],
    })

    assert camel == snake == SubscribeFrame(
        type="subscribe", channels=["session:a"], unsubscribe_channels=["user:u"],
    )


@pytest.mark.parametrize(("obj", "expected"), [
    ({"type": "heartbeat"}, HeartbeatFrame(type="heartbeat")),
    ({"type": "ping", "timestamp": "t"}, HeartbeatFrame(type="ping")),
    (
        {"type": "user_typing", "payload": {"isTyping": True}},
        TypingFrame(type="user_typing", is_typing=True),
    ),
    ({"type": "chat_typing_stop"}, TypingFrame(type="chat_typing_stop", is_typing=None)),
    (
        {"type": "history", "channel": "session:a"},
        HistoryFrame(type="history", channel="session:a", limit=50, since=None),
    ),
    (
        {"type": "history", "payload": {"channel": "session:a", "limit": 10, "since": 5}},
        HistoryFrame(type="history", channel="session:a", limit=10, since=5),
    ),
    (
        {"type": "recover", "payload": {"channels": {"session:a": {"offset": 3, "epoch": "E"}}}},
        RecoverFrame(type="recover", channels={"session:a": RecoverPosition(offset=3, epoch="E")}),
    ),
    (
        {"type": "presence", "channel": "session:a"},
        PresenceFrame(type="presence", channel="session:a"),
    ),
    (
        {"type": "batch", "payload": {"messages": [{"type": "heartbeat"}]}},
        BatchFrame(type="batch", messages=[{"type": "heartbeat"}]),
    ),
    (
        {"type": "chat_message", "payload": {"content": "x", "messageId": "m-1"}},
        ChatMessageFrame(type="chat_message", content="x", id="m-1", attachments=None),
    ),
])
def test_each_client_frame_type(obj: dict[str, Any], expected: object) -> None:
    assert parse_frame(obj) == expected


@pytest.mark.parametrize("obj", [
    {"type": "launch_missiles"},
    {"type": "auth", "token": "t"},  # auth is only the first frame
    {"payload": {"content": "hi"}},
    {"type": 7},
    {"type": None},
])
def test_unknown_type_is_a_protocol_error(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(obj)
    assert info.value.code == "unknown_type"


def test_unknown_type_message_is_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame({"type": "x" * 10_000})
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("obj", [
    {"type": "chat_message"},
    {"type": "chat_message", "content": "x" * 32_001},
    {"type": "chat_message", "content": 5},
    {"type": "history", "channel": "session:a", "limit": 0},
    {"type": "history", "channel": "session:a", "limit": 1001},
    {"type": "recover", "channels": {"session:a": {"offset": -1}}},
    {"type": "subscribe", "channels": [f"session:{i}" for i in range(101)]},
    {"type": "batch", "messages": [{}] * 101},
    {"type": "presence", "channel": "c" * 201},
])
def test_invalid_fields_are_invalid_message(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(obj)
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize("text", ["{", "not json", b"\xff\xfe", "", '{"a":1'])
def test_malformed_json(text: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        load_json_object(text)
    assert info.value.code == "malformed_json"


@pytest.mark.parametrize("text", ["[1,2]", "42", '"str"', "null"])
def test_json_that_is_not_an_object(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        load_json_object(text)
    assert info.value.code == "invalid_message"


def test_load_json_object_accepts_text_and_bytes() -> None:
    assert load_json_object('{"type":"heartbeat"}') == {"type": "heartbeat"}
    assert load_json_object(b'{"type":"heartbeat"}') == {"type": "heartbeat"}


# ---- the auth frame ------------------------------------------------------------------------


def test_auth_untyped_with_session_and_channels() -> None:
    frame = parse_auth({"token": "tok", "session_id": "s1", "channels": ["user:u1"]})

    assert frame == AuthFrame(token="tok", session_id="s1", channels=["user:u1"])


def test_auth_typed_under_payload() -> None:
    frame = parse_auth({"type": "auth", "payload": {"token": "tok"}, "timestamp": "t"})

    assert (frame.token, frame.session_id, frame.channels, frame.recover) == ("tok", None, [], None)


def test_auth_typed_flat_with_camel_case_session_id() -> None:
    frame = parse_auth({"type": "auth", "token": "tok", "sessionId": "s9"})

    assert (frame.token, frame.session_id) == ("tok", "s9")


def test_auth_frame_can_carry_recover_positions() -> None:
    frame = parse_auth({"token": "tok", "recover": {"session:s1": {"offset": 7, "epoch": "E"}}})

    assert frame.recover == {"session:s1": RecoverPosition(offset=7, epoch="E")}


@pytest.mark.parametrize("kind", ["chat_message", "heartbeat", "subscribe", ""])
def test_auth_rejects_other_types(kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_auth({"type": kind, "token": "tok"})
    assert info.value.code == "auth_required"


@pytest.mark.parametrize("obj", [
    {},
    {"type": "auth"},
    {"token": ""},
    {"token": 123},
    {"token": "t" * 8193},
    {"token": "tok", "channels": "user:u1"},
    {"token": "tok", "recover": {"session:a": {"offset": -5}}},
])
def test_auth_without_a_usable_token_is_invalid(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_auth(obj)
    assert info.value.code == "invalid_auth_frame"


def test_new_ids_are_unique_in_a_process_and_across_processes() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    code = "from services.common import wire; print(wire.new_id())"
    others = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip() for _ in range(2)}
    assert len(others) == 2 and not others & set(ids)
    assert len({i[:16] for i in (*others, ids[0])}) == 3  # each process draws its own prefix
