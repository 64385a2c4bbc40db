"""A message that does not decode is told by field paths and messages only: the reason goes to
the log, the dead-letter topic, the console and ``replay``'s output, and a poison message may
hold anything, keys included (one written by another producer, a tool, a bug)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pydantic import TypeAdapter

from models.events import ChatRequest, GenerateText
from streams.codecs import _checked, decode, decode_requests, encode
from streams.errors import DecodeError

KEY = "sk-POISON-openai-3f9a77c1"


def _reason(raw: bytes, model: type[GenerateText] | None = None) -> str:
    with pytest.raises(DecodeError) as refused:
        decode(model, raw) if model is not None else decode_requests(raw)
    return str(refused.value)


def _command(**changes: object) -> bytes:
    command = GenerateText(
        request_id="r1",
        person="acme:ada@example.com",
        site="acme",
        attempt=1,
        issued_at_ms=1_700_000_000_000,
        chat=ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=9),
        openai_api_key="gAAAA-sealed",
    )
    tree = json.loads(encode(command))
    tree.update(changes)
    return json.dumps(tree).encode()


def test_a_requests_message_of_an_unknown_kind_is_told_without_its_kind() -> None:
    # pydantic's message quotes the tag it found ("Input tag '<kind>' found using 'kind' ...")
    reason = _reason(json.dumps({"kind": KEY, "request_id": "r1"}).encode())

    assert KEY not in reason
    assert "kind" in reason and "'request_received'" in reason, reason


def test_a_name_a_message_does_not_know_ends_the_field_path() -> None:
    # a dict's keys are the message's own: pydantic's path names them
    chat = {"model": "gpt-4o", "messages": [{KEY: 5}], "max_tokens": 9}
    reason = _reason(_command(chat=chat), GenerateText)

    assert KEY not in reason
    assert reason == "does not decode: chat.messages.0: Input should be a valid string", reason


def test_the_names_a_message_knows_stay_in_the_path() -> None:
    chat = {"model": 5, "messages": [], "max_tokens": 9}
    reason = _reason(_command(attempt="two", chat=chat), GenerateText)

    assert "attempt: " in reason and "chat.model: " in reason, reason


def test_a_shape_without_a_json_schema_still_refuses_with_a_decode_error() -> None:
    # the names a reason may show come from the shape's JSON Schema, made on the error path:
    # a shape without one raised there, from the handler of the poison message
    validate = TypeAdapter(int).validate_json

    with pytest.raises(DecodeError) as refused:
        _checked(validate, b'"seven"', Callable[[], None])

    assert str(refused.value).startswith("does not decode: value: Input should be a valid integer")
