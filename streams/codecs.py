"""The one place topic values become bytes and back (pydantic JSON)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError

from models.events import RequestsValue
from streams.errors import DecodeError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_requests = TypeAdapter[RequestsValue](RequestsValue)


def encode(value: BaseModel) -> bytes:
    # the bytes ``model_dump_json`` makes before it decodes them to a str (every value on the
    # hot path and every event ``replay --verify`` derives is encoded here: a third cheaper)
    return type(value).__pydantic_serializer__.to_json(value)


def decode(model: type[M], raw: bytes | None) -> M:
    return _checked(model.model_validate_json, raw, model)


def decode_requests(raw: bytes | None) -> RequestsValue:
    return _checked(_requests.validate_json, raw, RequestsValue)


def _checked(validate: Callable[[bytes], T], raw: bytes | None, shape: Any) -> T:
    if raw is None:
        raise DecodeError("empty value (tombstone)")
    try:
        return validate(raw)
    except ValidationError as exc:
        raise DecodeError(_reason(exc, _names(shape))) from None


def _reason(exc: ValidationError, names: frozenset[str]) -> str:
    """Field paths and messages only: a poison message may contain anything. A path stops
    where a name the shape does not know begins (a dict's keys are the message's own), and a
    discriminator's message leaves out the tag it found (pydantic's quotes it)."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False, include_context=True)
    for err in errors[:5]:
        loc = ".".join(str(p) for p in _known(err["loc"], names)) or "value"
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            context = err.get("ctx", {})
            msg = (
                f"Input tag found using {context.get('discriminator')} does not match any of "
                f"the expected tags: {context.get('expected_tags')}"
            )
        parts.append(f"{loc}: {msg}")
    return "does not decode: " + "; ".join(parts)


def _known(loc: tuple[int | str, ...], names: frozenset[str]) -> list[int | str]:
    known: list[int | str] = []
    for part in loc:
        if isinstance(part, str) and part not in names:
            break
        known.append(part)
    return known


@functools.cache
def _names(shape: Any) -> frozenset[str]:
    """Every field name and tag of the shape (its JSON Schema's properties and constants)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "properties" and isinstance(value, dict):
                    found.update(value)
                elif name == "const" and isinstance(value, str):
                    found.add(value)
                elif name == "enum" and isinstance(value, list):
                    found.update(v for v in value if isinstance(v, str))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        schema = TypeAdapter[Any](shape).json_schema()
    except PydanticUserError:  # a shape without a JSON Schema: no path, still a DecodeError
        return frozenset()
    walk(schema)
    return frozenset(found)
