"""Request bodies as plain trees, before the contract (``models.params``) types them.

- :func:`decode_body`: JSON, ``application/x-www-form-urlencoded`` or ``multipart/form-data``
  by media type (unsupported otherwise); an empty body is ``{}``.
- :func:`unwrap_legacy`: a legacy Talkable webhook (``key``, ``site``, ``type``, ``extras``,
  ``payload``) becomes its params.
- :func:`decode_query`: query-string params (UTF-8), nested like a form.
- :func:`merge`: deep merge, the override wins.

JSON is read strictly: no NaN or Infinity (not JSON: unreadable, at its path), no lone
surrogates, at most ``MAX_JSON_DEPTH`` levels, no integer longer than Python reads (4,300
digits) nor a number beyond a double's range (``1e999``): valid JSON, refused as invalid at
its path; last duplicate key wins (as ``JSON.parse`` does). UTF-8, or UTF-16/32 as
``json.loads`` tells them from the first bytes (a BOM, or where the zero bytes fall): RFC 8259
asks senders for UTF-8, and a text that reads unambiguously is not refused for its encoding.

Form names nest as Rails does (Rack's ``QueryParser#normalize_params``); values stay strings:

- ``a=1`` sets a key. A scalar key given again with another value (``site=s&site=t``) is
  unreadable, naming it: Rack keeps the last value, which silently dropped the first (Talkable
  sends params as objects, never a scalar twice: a repeat is a template mistake). The same
  value again is taken once. Arrays are repeated with ``[]`` (``a[]=1&a[]=2``).
- ``a[b]=1`` nests a hash; ``a[]=1`` appends to an array.
- ``a[][b]=1`` appends hashes to an array: the value joins the array's last hash unless that
  hash already has ``b``, in which case a new hash starts (so ``[][role]=…&[][content]=…`` pairs
  up, and the next ``[][role]`` begins the next element).
- A scalar and a container under one name (``a=1&a[b]=2``, ``a[]=1&a[b]=2``, in either order)
  conflict: unreadable (Rack raises for some orders and silently overwrites in others; we refuse
  both, since either is a template mistake).
- After nesting, a hash whose keys are all decimal indices (``messages[0][role]``) becomes a
  list in index order, except under keys whose values are maps keyed by numbers
  (``logit_bias``, ``metadata``). The list is a :class:`FormList`, which keeps the indices as
  written (``[0, 5]`` compacts to positions 0 and 1), so an error can name the one sent.

Pure: no IO. Every malformed input raises :class:`FormError`, nothing else.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value
from typing import Any
from urllib.parse import parse_qsl

from models.problems import Problem

MAX_JSON_DEPTH = 64
MAX_FORM_DEPTH = 32
MAX_FIELDS = 1000
# Keys whose values are maps keyed by numbers (token ids), never index lists.
MAP_KEYS = frozenset({"logit_bias", "metadata"})
ENVELOPE = frozenset({"key", "site", "type", "extras", "payload"})

_JSON_TYPES = frozenset({"", "application/json", "text/json"})
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii"})
_NAME = re.compile(r"[\[\]]*([^\[\]]+)\]*")
_ARRAY_OF_HASH = re.compile(r"\[\]\[([^\[\]]+)\]")
_ARRAY_NESTED = re.compile(r"\[\](.+)", re.DOTALL)
_SPLIT = re.compile(r"[\[\]]+")
_CONFLICT = "given both as a value and as nested fields"
_REPEATED = "given more than once, with different values"
_NOT_MULTIPART = "not a valid multipart/form-data body"


class FormError(ValueError):
    """The request cannot become a tree; ``problem`` says why (unreadable, unsupported, or a
    legacy envelope that is not an object).

    ``field`` names where (``body``, ``content-type``, ``query``, ``extras``, ``payload``);
    ``path`` is the nesting path of a conflicting form name. Names are client input: the
    caller decides which of them are safe to repeat. Never raised while another exception is
    being handled, so it carries no chained exception (those can hold the raw body).
    """

    def __init__(
        self, problem: Problem, field: str, message: str, path: tuple[str | int, ...] = ()
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.field = field
        self.message = message
        self.path = path


def refuse_media(content_type: str) -> None:
    """Raises ``FormError(UNSUPPORTED)`` for a content type no body is read in, whatever the
    body: not JSON, form or multipart; a form not in UTF-8. Judged from the header alone, so
    the ingress can refuse it before the body is sent (``Expect: 100-continue``)."""
    media, options = _media_type(content_type)
    if media in _JSON_TYPES or media.endswith("+json"):
        return
    if media not in (_FORM, _MULTIPART):
        raise FormError(Problem.UNSUPPORTED, "content-type", "unsupported; send JSON or form data")
    if options.get("charset", "utf-8").lower() not in _UTF8:
        raise FormError(Problem.UNSUPPORTED, "content-type", "form bodies must be UTF-8")


def decode_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The body as a tree, by media type."""
    refuse_media(content_type)
    media, _ = _media_type(content_type)
    if media in _JSON_TYPES or media.endswith("+json"):
        if not body.strip():
            return {}
        data = load_json(body, "body", Problem.UNREADABLE)
        if not isinstance(data, dict):
            raise FormError(Problem.UNREADABLE, "body", "must be a JSON object")
        return data
    if media == _FORM and _json_object(body):
        # ``curl -d '{...}'`` without a Content-Type: read as a form, it is one nameless field,
        # and every param would be told "is required"
        raise FormError(
            Problem.UNSUPPORTED,
            "content-type",
            "the body is a JSON object, sent as a form: send it as application/json",
        )
    pairs = _urlencoded_pairs(body) if media == _FORM else _multipart_pairs(content_type, body)
    return nest(pairs)


def _json_object(body: bytes) -> bool:
    if not body.lstrip().startswith(b"{"):  # no form's params: a name of "{"... is no param
        return False
    try:
        return isinstance(load_json(body, "body", Problem.UNREADABLE), dict)
    except FormError:
        return False


def load_json(text: bytes | str, field: str, problem_if_bad: Problem) -> Any:
    """Strict JSON; a failure is ``FormError(problem_if_bad, field)``. A number that is valid
    JSON but no value any param takes, an integer longer than Python reads
    (``sys.get_int_max_str_digits()``, 4,300 digits) or one beyond a double's range (``1e999``,
    which Python reads as infinity), is ``FormError(INVALID)`` at its path; NaN and Infinity,
    which are not JSON, ``FormError(problem_if_bad)`` at theirs (each was "not valid JSON",
    naming no field)."""
    problem = ""
    misread: object = None
    path: tuple[str | int, ...] = ()
    try:
        data = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_integer
        )
    except _Unreadable as exc:
        try:
            misread, path = exc.kind, _misread_at(text)
        except RecursionError:
            problem = "nested too deeply"
        except ValueError:  # not JSON past it
            problem = "not valid JSON"
    except RecursionError:
        problem = "nested too deeply"
    except UnicodeDecodeError:
        problem = "not valid UTF-8, UTF-16 or UTF-32"
    except ValueError:  # JSONDecodeError included
        problem = "not valid JSON"
    if misread is not None:
        if misread is _CONSTANT:
            message = "holds NaN or Infinity, which are not JSON"
            raise FormError(problem_if_bad, field, message, path)
        if misread is _HUGE:
            message = (
                f"holds a number of more than {sys.get_int_max_str_digits()} digits: too large"
            )
        else:
            message = f"holds a number out of range: beyond {sys.float_info.max:.1e} either way"
        raise FormError(Problem.INVALID, field, message, path)
    if problem:  # raised outside the handler: a JSONDecodeError holds the whole document
        raise FormError(problem_if_bad, field, problem)
    if not _sound(data, MAX_JSON_DEPTH):
        raise FormError(problem_if_bad, field, "nested too deeply or not valid Unicode")
    return data


def unwrap_legacy(tree: dict[str, Any]) -> dict[str, Any]:
    """A legacy webhook's params: ``payload``, then ``extras``, then other top-level fields.

    Deep merge, later wins; ``extras``/``payload`` may be objects or JSON strings (blank or
    null is empty). A ``usage_limit`` in ``payload`` that is not an object is Talkable's (a
    coupon's number of uses), not a param. ``site`` falls back to the envelope's when the
    params lack one or it is blank. The envelope's ``key`` (a security key) and ``type`` never
    become params. A tree without ``extras`` and ``payload`` is returned as is.
    """
    if "extras" not in tree and "payload" not in tree:
        return tree
    explicit = {k: v for k, v in tree.items() if k not in ENVELOPE}
    payload = _legacy_part(tree, "payload")
    if "usage_limit" in payload and not isinstance(payload["usage_limit"], dict):
        # Talkable's own field of that name: its Create Coupon webhook's payload gives the
        # coupon's number of uses (an integer), which read as the params' usage window made
        # every such webhook a 422 ("usage_limit: must be an object"), retried by Talkable
        payload = {k: v for k, v in payload.items() if k != "usage_limit"}
    merged = merge(merge(payload, _legacy_part(tree, "extras")), explicit)
    site = merged.get("site")
    if (site is None or (isinstance(site, str) and not site.strip())) and "site" in tree:
        merged["site"] = tree["site"]
    return merged


def decode_query(query: str | Mapping[str, str] | Mapping[str, list[str]]) -> dict[str, Any]:
    """Query params as a tree: the raw query string as sent (percent-encoded), or one value or
    a list per name, or a multidict's pairs.

    A raw query string reads as aiohttp's ``request.query`` would, but strictly: an escape that
    is not UTF-8 is unreadable, where ``request.query`` puts U+FFFD in its place and passes the
    mangled value off as the one sent.
    """
    pairs: list[tuple[str, str]] = []
    given = _raw_query_pairs(query) if isinstance(query, str) else _query_pairs(query)
    for name, item in given:
        if not isinstance(name, str) or not isinstance(item, str):
            raise FormError(Problem.UNREADABLE, "query", "names and values must be strings")
        if not _sound(name, 1) or not _sound(item, 1):
            raise FormError(Problem.UNREADABLE, "query", "not valid Unicode")
        pairs.append((name, item))
    try:
        return nest(pairs)
    except FormError as exc:
        error = exc
    error.field = "query"
    raise error


def _query_pairs(query: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    pairs: list[tuple[Any, Any]] = []
    for name, value in query.items():
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((name, item) for item in values)
    return pairs


def _raw_query_pairs(query: str) -> list[tuple[str, str]]:
    try:  # what yarl's query_to_pairs gives, with errors="strict" instead of "replace"
        return parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeError:
        pass
    raise FormError(Problem.UNREADABLE, "query", "not valid UTF-8")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, ``override`` wins; objects merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    media, _, rest = content_type.partition(";")
    options: dict[str, str] = {}
    for item in rest.split(";"):
        name, eq, value = item.partition("=")
        if eq:
            options[name.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), options


class _Unreadable(ValueError):
    """A value ``json.loads`` reads that no param takes, ``kind``: NaN or Infinity (not
    JSON), an integer longer than ``int()`` reads (CPython's guard against quadratic parsing),
    a number beyond a double's range."""

    def __init__(self, kind: object) -> None:
        super().__init__()
        self.kind = kind


# what ``_misread_at`` reads each such value as, to find where it is and what it is
_CONSTANT = object()
_HUGE = object()
_OUT_OF_RANGE = object()
_MISREAD = (_CONSTANT, _HUGE, _OUT_OF_RANGE)


def _too_long(digits: str) -> bool:
    limit = sys.get_int_max_str_digits()
    return bool(limit) and len(digits) - digits.startswith("-") > limit


def _integer(text: str) -> int:
    if _too_long(text):
        raise _Unreadable(_HUGE)
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise _Unreadable(_CONSTANT)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unreadable(_OUT_OF_RANGE)
    return value


def _misread_at(text: bytes | str) -> tuple[str | int, ...]:
    """Where the first value of the JSON ``text`` that :class:`_Unreadable` refused is, in the
    document's order (as ``json.loads`` stops at it): its path of keys and list positions.
    Raises ValueError when the text is not JSON past it, RecursionError when it is nested
    deeper than Python reads."""
    tree = json.loads(
        text,
        parse_constant=lambda _: _CONSTANT,
        parse_float=lambda digits: 0.0 if math.isfinite(float(digits)) else _OUT_OF_RANGE,
        parse_int=lambda digits: _HUGE if _too_long(digits) else 0,
    )
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(tree, ())]
    while stack:
        node, path = stack.pop()
        if any(node is kind for kind in _MISREAD):
            return path
        if isinstance(node, dict | list):
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend((child, (*path, key)) for key, child in reversed(list(items)))
    return ()  # a duplicate key's later value replaced it: the document's


def _sound(data: Any, max_depth: int) -> bool:
    """At most ``max_depth`` levels of containers, and every string valid Unicode."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                return False
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(node, str) and not _encodable(node):
            return False
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeError:
        return False
    return True


def _legacy_part(tree: dict[str, Any], name: str) -> dict[str, Any]:
    value = tree.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        value = load_json(value, name, Problem.INVALID)
    if not isinstance(value, dict):
        raise FormError(Problem.INVALID, name, "must be a JSON object")
    return value


def _urlencoded_pairs(body: bytes) -> list[tuple[str, str]]:
    problem = ""
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeError:
        problem = "not valid UTF-8"
    except ValueError:
        problem = f"more than {MAX_FIELDS} fields"
    raise FormError(Problem.UNREADABLE, "body", problem)


def _multipart_pairs(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """Text parts (UTF-8) of a ``multipart/form-data`` body; file parts are read as text."""
    if not content_type.isascii() or any(ch in content_type for ch in "\r\n\0"):
        raise FormError(Problem.UNREADABLE, "content-type", "malformed")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("ascii")
    # The stdlib MIME parser is lenient and documents no exception contract: this one boundary
    # turns whatever it raises into a malformed-body answer.
    problem = _NOT_MULTIPART
    try:
        pairs = _parts(BytesParser().parsebytes(head + body))
    except FormError as exc:
        problem = exc.message
    except UnicodeError:
        problem = "not valid UTF-8"
    except Exception:
        problem = _NOT_MULTIPART
    else:
        if len(pairs) <= MAX_FIELDS:
            return pairs
        problem = f"more than {MAX_FIELDS} fields"
    raise FormError(Problem.UNREADABLE, "body", problem)


def _parts(message: Message) -> list[tuple[str, str]]:
    if not message.is_multipart() or message.defects:
        raise FormError(Problem.UNREADABLE, "body", _NOT_MULTIPART)
    pairs = []
    for part in message.get_payload():
        if not isinstance(part, Message) or part.defects or part.is_multipart():
            raise FormError(Problem.UNREADABLE, "body", _NOT_MULTIPART)
        name = part.get_param("name", header="content-disposition")
        if name is None or part.get_content_disposition() != "form-data":
            continue
        if str(part.get_param("charset") or "utf-8").lower() not in _UTF8:
            raise FormError(Problem.UNREADABLE, "body", "parts must be UTF-8")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise FormError(Problem.UNREADABLE, "body", _NOT_MULTIPART)
        pairs.append((collapse_rfc2231_value(name), payload.decode("utf-8")))
    return pairs


class FormList(list[Any]):
    """A list a form gave by index (``messages[0]``, ``messages[5]``), in index order:
    ``indices[i]`` is the index the sender wrote for position ``i``, as written."""

    def __init__(self, items: Iterable[Any], indices: Iterable[str]) -> None:
        super().__init__(items)
        self.indices = tuple(indices)


def nest(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Rack's nesting over ``(name, value)`` pairs, then index hashes to lists."""
    params: dict[str, Any] = {}
    for name, value in pairs:
        _normalize(params, name, value, MAX_FORM_DEPTH, ())
    return {key: _index_lists(key, value) for key, value in params.items()}


def _normalize(
    params: dict[str, Any], name: str, value: str, depth: int, path: tuple[str, ...]
) -> Any:
    """Rack's ``normalize_params``: put ``value`` at ``name`` inside ``params``.

    Returns the container to store (``params`` itself, or a one-element list for a bare
    ``[]``), or ``None`` when the name has no key and the pair is ignored.
    """
    if depth <= 0:
        raise FormError(
            Problem.UNREADABLE, "body", f"nested deeper than {MAX_FORM_DEPTH} levels", path
        )
    match = _NAME.match(name)
    key = match.group(1) if match else ""
    after = name[match.end() :] if match else ""
    if not key:
        return [value] if name == "[]" else None
    here = (*path, key)

    if after == "":
        _set_scalar(params, key, value, here)
    elif after == "[":
        _set_scalar(params, name, value, here)
    elif after == "[]":
        _list_at(params, key, here).append(value)
    elif nested := (_ARRAY_OF_HASH.fullmatch(after) or _ARRAY_NESTED.fullmatch(after)):
        child_key = nested.group(1)
        items = _list_at(params, key, here)
        last = items[-1] if items else None
        if isinstance(last, dict) and not _has_key(last, child_key):
            _normalize(last, child_key, value, depth - 1, here)
        else:
            child = _normalize({}, child_key, value, depth - 1, here)
            if child is not None:
                items.append(child)
    else:
        created = key not in params
        child = _dict_at(params, key, here)
        result = _normalize(child, after, value, depth - 1, here)
        if result is None and created and not child:
            del params[key]
        elif result is not None and result is not child:
            params[key] = result
    return params


def _set_scalar(params: dict[str, Any], key: str, value: str, path: tuple[str, ...]) -> None:
    current = params.get(key)
    if isinstance(current, dict | list):
        raise FormError(Problem.UNREADABLE, "body", _CONFLICT, path)
    if current is not None and current != value:
        raise FormError(Problem.UNREADABLE, "body", _REPEATED, path)
    params[key] = value


def _list_at(params: dict[str, Any], key: str, path: tuple[str, ...]) -> list[Any]:
    current = params.setdefault(key, [])
    if not isinstance(current, list):
        raise FormError(Problem.UNREADABLE, "body", _CONFLICT, path)
    return current


def _dict_at(params: dict[str, Any], key: str, path: tuple[str, ...]) -> dict[str, Any]:
    current = params.setdefault(key, {})
    if not isinstance(current, dict):
        raise FormError(Problem.UNREADABLE, "body", _CONFLICT, path)
    return current


def _has_key(hash_: dict[str, Any], key: str) -> bool:
    """Rack's ``params_hash_has_key?``: does the nested path ``key`` already exist?"""
    if "[]" in key:
        return False
    node: Any = hash_
    for part in _SPLIT.split(key):
        if part == "":
            continue
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _index_lists(key: str, value: Any) -> Any:
    """``{"0": a, "1": b}`` → ``[a, b]`` (index order), recursively; maps stay maps."""
    if isinstance(value, list):
        return [_index_lists("", item) for item in value]
    if not isinstance(value, dict):
        return value
    nested = {k: _index_lists(k, v) for k, v in value.items()}
    if key in MAP_KEYS or not nested or not all(k.isascii() and k.isdigit() for k in nested):
        return nested
    order = sorted(nested, key=_index_order)
    return FormList((nested[k] for k in order), order)


def _index_order(index: str) -> tuple[int, str, str]:
    # numeric order without int(): indices may be longer than int() accepts
    digits = index.lstrip("0")
    return len(digits), digits, index
