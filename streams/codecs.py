"""The one place topic values become bytes and back (pydantic JSON)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

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
    return _checked(model.model_validate_json, raw)


def decode_requests(raw: bytes | None) -> RequestsValue:
    return _checked(_requests.validate_json, raw)


def _checked(validate: Callable[[bytes], T], raw: bytes | None) -> T:
    if raw is None:
        raise DecodeError("empty value (tombstone)")
    try:
        return validate(raw)
    except ValidationError as exc:
        raise DecodeError(_reason(exc)) from None


def _reason(exc: ValidationError) -> str:
    """Field paths and messages only: a poison message may contain anything."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    return "does not decode: " + "; ".join(parts)
