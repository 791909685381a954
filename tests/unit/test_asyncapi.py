"""docs/asyncapi.yaml is checked against the server's own models, so the two cannot drift.

No official AsyncAPI 3.0 JSON Schema ships in an installed package, so the checks are
structural: valid YAML, `asyncapi: 3.0.0`, every `$ref` resolves, operations reference their
channel's messages, every payload is a valid JSON Schema (jsonschema's metaschema check), and
messages, fields and close codes match wire.py and close_codes.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common import wire
from services.common.close_codes import RULES

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(DOC_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def test_is_an_asyncapi_3_document(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(doc["info"])
    assert all({"host", "protocol"} <= set(s) for s in doc["servers"].values())


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert found
    for ref in found:
        resolve(doc, ref)


def test_both_endpoints_with_and_without_the_api_prefix(doc: dict[str, Any]) -> None:
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"/ws/chat/{session_id}", "/api/ws/chat/{session_id}",
                         "/ws/agent-status/{user_id}", "/api/ws/agent-status/{user_id}"}
    for channel in doc["channels"].values():
        params = set(channel["parameters"])
        assert {p.strip("{}") for p in channel["address"].split("/") if p.startswith("{")} == params


def test_operations_send_and_receive_their_channels_messages(doc: dict[str, Any]) -> None:
    for name in doc["channels"]:
        actions = {op["action"] for op in doc["operations"].values()
                   if op["channel"]["$ref"] == f"#/channels/{name}"}
        assert actions == {"send", "receive"}, name
    for op in doc["operations"].values():
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/")


def messages(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = doc["components"]["messages"]
    return out


def test_every_event_type_has_a_message(doc: dict[str, Any]) -> None:
    msgs = messages(doc)
    for event_type in wire.EVENT_TYPES:
        message = msgs[f"event_{event_type}"]
        assert message["name"] == event_type
        parts = deref(doc, message["payload"])["allOf"]
        assert any(p.get("properties", {}).get("type", {}).get("const") == event_type for p in parts)
    envelope = doc["components"]["schemas"]["EventEnvelope"]
    assert set(envelope["properties"]["type"]["enum"]) == set(wire.EVENT_TYPES)
    documented = {k.removeprefix("event_") for k in msgs if k.startswith("event_")}
    assert documented == set(wire.EVENT_TYPES)


def test_every_client_frame_matches_its_model(doc: dict[str, Any]) -> None:
    msgs = messages(doc)
    frames = {"auth": wire.AuthFrame, **wire._FRAME_MODELS}
    documented = {k.removeprefix("frame_") for k in msgs if k.startswith("frame_")}
    assert documented == set(frames)
    for frame_type, model in frames.items():
        payload = deref(doc, msgs[f"frame_{frame_type}"]["payload"])
        schema = model.model_json_schema()
        assert set(payload["properties"]) == set(schema["properties"]), frame_type
        assert set(payload.get("required", [])) == set(schema.get("required", [])), frame_type
        if frame_type != "auth":
            declared = payload["properties"]["type"]
            assert frame_type in declared.get("enum", [declared.get("const")])


def test_payloads_and_schemas_are_valid_json_schemas(doc: dict[str, Any]) -> None:
    for message in messages(doc).values():
        jsonschema.Draft202012Validator.check_schema(message["payload"])
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_operation_sends_every_frame_and_receives_every_event(doc: dict[str, Any]) -> None:
    for op in doc["operations"].values():
        keys = {m["$ref"].rsplit("/", 1)[1] for m in op["messages"]}
        if op["action"] == "send":
            assert keys == {"frame_auth", *(f"frame_{t}" for t in wire._FRAME_MODELS)}
        else:
            assert keys == {"auth_reply", *(f"event_{t}" for t in wire.EVENT_TYPES)}


def test_close_codes_match_the_table(doc: dict[str, Any]) -> None:
    documented = {c["code"]: c for c in doc["info"]["x-close-codes"]}
    assert set(documented) == {int(code) for code in RULES}
    for code, rule in RULES.items():
        assert documented[int(code)]["reconnect"] is rule.reconnect
        assert documented[int(code)]["name"] == code.name
