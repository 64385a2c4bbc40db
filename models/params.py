"""The webhook contract (DESIGN.md §1) and its parsing.

Parse, don't validate: whatever shape Talkable sent becomes one :class:`GenerateParams`, or a
:class:`ParamsError` whose ``errors`` name every offending field (dotted paths such as
``usage_limit.current_time`` or ``openai.messages.0.role``). Error messages never repeat an
input value, so a secret cannot leak through a 4xx body or a log line.

The same params in any shape (JSON, Rails-style form, legacy webhook, query string) give equal
:class:`GenerateParams` and the same :func:`request_fingerprint`.

Liquid renders every value as a string, so the contract types values itself (``models.values``):

- integers (``usage_limit.*``, ``openai.max_tokens``, ``openai.n``, …) accept ints and digit
  strings; floats, negatives, blanks and words are refused (``openai.seed`` may be negative);
- the well-known numeric and boolean Chat Completions params (``temperature``, ``top_p``,
  ``presence_penalty``, ``frequency_penalty``; ``n``, ``seed``, ``max_completion_tokens``,
  ``top_logprobs``; ``logprobs``, ``parallel_tool_calls``, ``store``) accept their JSON type or
  a string of it (``"0.7"``, ``"true"``); ``stream: true`` is refused (the generator reads one
  whole completion); every other ``openai.*`` key passes through unchanged;
- ``usage_limit`` absent, ``null``, ``{}`` or a blank string means *no limit* (it carries no
  limit at all). Any other object must carry all five fields, each valid: an object whose
  values rendered blank is a broken limit, refused as invalid rather than silently unlimited;
- a JSON ``null`` for a field of the contract is the field absent (its default, or "is
  required"); a null ``openai.*`` key passed through stays ``null``;
- ``trigger_criteria`` is kept as rendered: a blank string (the seed's ``{% if %}`` when the
  condition is false) is *not* absent, and does not trigger (:func:`trigger_met`). A JSON
  boolean or number is read as its text (``true``, ``1``), as a form would carry it; an object
  or a list is refused, the message saying what is accepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from models.forms import (
    ENVELOPE,
    MAX_FIELDS,
    FormError,
    FormList,
    decode_body,
    decode_query,
    merge,
    refuse_media,
    unwrap_legacy,
)
from models.problems import Problem
from models.values import (
    CONTROL,
    INT64_MAX,
    INVISIBLE_RULE,
    SITE_SLUG,
    SITE_SLUG_RULE,
    FiniteFloat,
    Flag,
    NonNegativeInt,
    PositiveInt,
    Secret,
    SignedInt,
    digits,
    flag,
    invisible,
    lower_text,
    no_stream,
    participant_name,
    rendered,
)

DEFAULT_MODEL = "gpt-3.5-turbo"
DEFAULT_MAX_TOKENS = 150
# The completion's event category, and the prefix of its default event number; never the
# trigger's (``generate_text``), or Talkable's own event webhook would call us again for our
# own write-back.
COMPLETION_EVENT_CATEGORY: Final = "generate_text_complete"
TRIGGER_RULE: Final = (
    "must be a string, number or boolean: generation happens only when it is absent, null or"
    " true (trimmed, any case); any other value (false, 1, 0, blank) skips the request"
)

# --- errors ---------------------------------------------------------------------------------


class FieldError(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    message: str


class ParamsError(Exception):
    """The request cannot become :class:`GenerateParams`; ``problem`` says why.

    Unreadable body (``body``, ``query``, or the form field that conflicts), a body over the
    limit (``body``), an unsupported content type (``content-type``), invalid params (their
    dotted paths).
    """

    def __init__(self, problem: Problem, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.problem = problem
        self.errors = errors

    def body(self) -> dict[str, Any]:
        return {"errors": [e.model_dump() for e in self.errors]}


def _error(problem: Problem, field: str, message: str) -> ParamsError:
    return ParamsError(problem, [FieldError(field=field, message=message)])


# what ``openai.messages`` is, in each shape a webhook sends: said to a webhook that sent
# something else (a form's ``openai[messages]=...`` is one string, its
# ``openai[messages][role]=...`` one object)
MESSAGES_SHAPE: Final = (
    "must be a list of messages, each with a role and a content: in JSON "
    '[{"role": "user", "content": "..."}]; in a form openai[messages][][role]=user&'
    "openai[messages][][content]=... (or openai[messages][0][role]=..., [1], ...)"
)


def _nulls_absent(model: type[BaseModel], data: Any) -> Any:
    """A JSON ``null`` for a field of ``model`` is the field absent: its default, or "is
    required". (``max_tokens: null`` was a 422 where ``usage_limit``, ``event_number`` or a
    message's ``name`` took it as absent.) Keys the model does not declare (``openai.*`` passed
    through) keep their ``null``."""
    if isinstance(data, Mapping) and any(value is None for value in data.values()):
        fields = model.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields}
    return data


# --- the contract ---------------------------------------------------------------------------


class Message(BaseModel):
    """One message of the prompt: a role, its text and, optionally, OpenAI's ``name`` of the
    participant (which tells apart participants of one role). Not ``tool``: OpenAI takes a
    tool's message only with its ``tool_call_id``, answering an assistant's ``tool_calls``,
    which these fields cannot carry (every such webhook was a 400 from OpenAI).

    ``name`` is left out of the message (and of :func:`request_fingerprint`: a webhook's id
    is what it was before messages could carry one) when it is absent, ``null`` or blank."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Annotated[
        Literal["system", "user", "assistant", "developer"], BeforeValidator(lower_text)
    ]
    content: str
    name: Annotated[str | None, BeforeValidator(participant_name)] = Field(
        None, exclude_if=lambda name: name is None
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _nulls_absent(cls, data)


# Typed passthrough params: coerced from strings, sent only when given.
_TYPED_PASSTHROUGH = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "seed",
    "max_completion_tokens",
    "top_logprobs",
    "logprobs",
    "parallel_tool_calls",
    "store",
    "stream",
)


class OpenAIParams(BaseModel):
    """``openai.*``; unknown keys (stop, user, tools, …) pass through unchanged."""

    model_config = ConfigDict(frozen=True, extra="allow")

    messages: list[Message] = Field(min_length=1)
    api_key: Secret
    # at most what the SQL projection's ``requests.model`` holds (VARCHAR(200)): every
    # lifecycle event of a generation carries the model asked for, and a longer one, accepted,
    # made PostgreSQL refuse the projector's batch, which it retried for good, holding up the
    # projection of every site. OpenAI's ids, fine-tunes' included, are far shorter.
    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=200)
    max_tokens: PositiveInt = DEFAULT_MAX_TOKENS

    temperature: FiniteFloat | None = None
    top_p: FiniteFloat | None = None
    presence_penalty: FiniteFloat | None = None
    frequency_penalty: FiniteFloat | None = None
    n: PositiveInt | None = None
    seed: SignedInt | None = None
    max_completion_tokens: PositiveInt | None = None
    top_logprobs: NonNegativeInt | None = None
    logprobs: Flag | None = None
    parallel_tool_calls: Flag | None = None
    store: Flag | None = None
    stream: Annotated[bool, BeforeValidator(flag), AfterValidator(no_stream)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _nulls_absent(cls, data)

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(MESSAGES_SHAPE)
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return rendered(value.strip()) if isinstance(value, str) else value

    def completion_cap(self) -> int:
        """The completion's token cap: ``max_completion_tokens`` when the campaign gives it
        (then ``max_tokens`` is not sent: reasoning models, o1 and later, refuse it), else
        ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def passthrough(self) -> dict[str, Any]:
        """The other Chat Completions params the request carried (never ``api_key``)."""
        given = {name: getattr(self, name) for name in _TYPED_PASSTHROUGH}
        return {
            **{k: v for k, v in given.items() if v is not None},
            **(self.__pydantic_extra__ or {}),
        }


# 9999-12-31T23:59:59Z, the last second ISO-8601 can write: later "epoch seconds" are not
LATEST_EPOCH_S: Final = 253_402_300_799


class UsageLimitParams(BaseModel):
    """The webhook's ``usage_limit`` as Talkable renders it (strings of digits); all-or-nothing:
    when present, every field is required. What travels on is a :class:`UsageLimit`.

    A window must last at least a second (0 would start a new window with every request: no
    limit at all). A ``start_time`` later than ``current_time`` (a clock ahead of Talkable's,
    a template bug) is read as ``current_time``: a window cannot start in the future, and the
    ``__start_time`` written back to Talkable is never one.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    amount: NonNegativeInt
    duration_in_seconds: NonNegativeInt
    start_time: NonNegativeInt
    current_time: NonNegativeInt
    current_usage_amount: NonNegativeInt

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _nulls_absent(cls, data)

    @field_validator("duration_in_seconds")
    @classmethod
    def _at_least_a_second(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1 (seconds)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _not_in_the_future(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        try:  # both must read as integers; anything else is for the fields to refuse
            start, now = digits(data.get("start_time")), digits(data.get("current_time"))
        except ValueError:
            return data
        if isinstance(start, int) and isinstance(now, int) and start > now >= 0:
            return {**data, "start_time": now}
        return data


class UsageLimit(BaseModel):
    """The person's usage snapshot from the webhook, validated: integers, the times in epoch
    seconds. A window lasts at least a second, and ``start_time`` is never after
    ``current_time`` (read as ``current_time``, as the ingress does)."""

    # what travels in [requests] and the ledger's table: plain integers, so that decoding it
    # (by every ledger that takes the webhook, by replay --verify) runs no Python per field;
    # the Liquid-rendered strings are UsageLimitParams' work at the edge
    model_config = ConfigDict(frozen=True, extra="ignore", from_attributes=True)

    amount: int = Field(ge=0, le=INT64_MAX)
    duration_in_seconds: int = Field(ge=1, le=INT64_MAX)
    start_time: int = Field(ge=0, le=INT64_MAX)
    current_time: int = Field(ge=0, le=INT64_MAX)
    current_usage_amount: int = Field(ge=0, le=INT64_MAX)

    @model_validator(mode="before")
    @classmethod
    def _not_in_the_future(cls, data: Any) -> Any:
        if isinstance(data, dict):
            start, now = data.get("start_time"), data.get("current_time")
            if type(start) is int and type(now) is int and start > now:
                return {**data, "start_time": now}
        return data


class GenerateParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    site: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320)
    api_key: Secret
    event_number: str | None = Field(None, max_length=200)
    openai: OpenAIParams
    usage_limit: UsageLimitParams | None = None
    trigger_criteria: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _nulls_absent(cls, data)

    @field_validator("site")
    @classmethod
    def _site(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        # ":" separates the site from the email in the person's key (``person_key``): a site
        # holding one would share the person of another site ("acme:shop" + "c@x.io" is
        # "acme" + "shop:c@x.io"), usage window and all. Talkable's slugs never hold one, nor
        # anything but printable ASCII (``SITE_SLUG``)
        if not SITE_SLUG.fullmatch(value):
            raise ValueError(SITE_SLUG_RULE)
        return rendered(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = rendered(value.strip().lower())
        local, at, domain = value.partition("@")
        if not (local and at and domain) or "@" in domain:
            raise ValueError("must be an email address")
        if CONTROL.search(value) or any(c.isspace() for c in value) or invisible(value):
            raise ValueError("must be an email address")
        return value

    @field_validator("event_number")
    @classmethod
    def _event_number(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # it lands in Talkable as typed (and in its origin's slug,
        # ``generate_text_complete:<event_number>``): a bidi control or a zero-width character
        # there is a number no one can read back or type; letters outside ASCII stay (the
        # reference gives an event number as any string)
        if invisible(value):
            raise ValueError(INVISIBLE_RULE)
        return rendered(value.strip()) or None

    @field_validator("usage_limit", mode="before")
    @classmethod
    def _usage_limit(cls, value: Any) -> Any:
        """``null``, ``{}`` and ``""`` carry no limit: absent. Anything else is validated."""
        if value is None or (isinstance(value, dict | str) and not value):
            return None
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("trigger_criteria", mode="before")
    @classmethod
    def _trigger_criteria(cls, value: Any) -> Any:
        """A JSON scalar is read as Liquid renders it: ``true``/``false``, a number as its
        digits (``1`` is ``"1"``, which, as in a form, is not ``true``: no generation)."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        raise ValueError(TRIGGER_RULE)

    @property
    def person(self) -> str:
        """The key of all per-person state: the site in any case and the normalized email
        (:func:`person_key`)."""
        return person_key(self.site, self.email)


def person_key(site: str, email: str) -> str:
    """``site:email``, the site lower-cased: one key per person, as the site holds no ``:``
    (the first one ends it).

    A Talkable site slug is one site in any case (the ingress checks a webhook's signature
    with its site's key so, and the operator's tools take a site so): ``Shop``, ``shop`` and
    ``SHOP`` are one person's site, one usage window, one partition. (A key as the site was
    typed split a person into one window a spelling, and a limit of 1 admitted three.) The
    email is lower-cased already (``GenerateParams``); a site slug is ASCII
    (``SITE_SLUG``), so lower-casing it is its whole case fold.

    Records carry the key they were keyed by (``person`` on every value of [requests] and
    [lifecycle]): the ledger, a replay and ``replay --verify`` read it there and never derive
    it again, so a record written before this rule (schema 10 and earlier: the site as typed)
    keeps its own. :func:`person_keys` names both for a look-up.
    """
    return f"{site_identity(site)}:{email}"


def site_identity(site: str) -> str:
    """The site as one site in any case (lower-cased: a slug is ASCII): what the person's key
    holds, and what paces, backs off from and remembers a refusal of a Talkable site (the
    publisher's target, the key of [completions]); ``Shop``, ``shop`` and ``SHOP`` are one.
    Talkable is called with the site as each webhook typed it, which is what is recorded."""
    return site.lower()


def site_named(spellings: Collection[str]) -> str:
    """What the tools and the console call a site its webhooks spelled these ways (one site,
    :func:`site_identity`): its one spelling as typed, else lower-cased, as the ledger names
    it (``Shop`` alone stays ``Shop``; ``Shop`` and ``shop`` are ``shop``)."""
    if len(spellings) == 1:
        return next(iter(spellings))
    return site_identity(next(iter(spellings)))


def person_keys(sites: Iterable[str], email: str) -> list[str]:
    """Every key a person of these sites (a site's spellings: one key) may carry, each once:
    :func:`person_key`'s first, and, before schema 11, each site as typed (``Shop:ada@x.io``
    beside ``shop:ada@x.io``). For looking a person up in the projection, which holds records
    of both."""
    sites = list(sites)
    now = (person_key(site, email) for site in sites)
    return list(dict.fromkeys((*now, *(f"{site}:{email}" for site in sites))))


def trigger_met(trigger_criteria: str | None) -> bool:
    """Generate only when the criteria are absent or, trimmed and lower-cased, ``true``."""
    return trigger_criteria is None or trigger_criteria.strip().lower() == "true"


def completion_event_number(given: str | None, request_id: str) -> str:
    """The completion event's number: the given one, else unique per request (DESIGN §1):
    Talkable refuses a repeated event number with other data."""
    return given or f"{COMPLETION_EVENT_CATEGORY}-{request_id}"


def request_fingerprint(params: GenerateParams) -> str:
    """A stable id (32 hex chars of SHA-256) of the person and every param, secrets included.

    Canonical JSON (sorted keys, compact, ASCII) of the parsed params, so the same params in
    any shape give the same id and any change gives another. Secrets enter only the hash.
    """
    canonical = {
        "v": 1,
        "site": params.site,
        "email": params.email,
        "params": params.model_dump(mode="python"),
    }
    text = json.dumps(
        canonical, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_reveal
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    raise TypeError(f"not canonical JSON: {type(value).__name__}")


def from_mapping(data: Mapping[str, Any]) -> GenerateParams:
    """Validate an already-decoded mapping; :class:`ParamsError` (invalid) names every bad
    field."""
    try:
        return GenerateParams.model_validate(dict(data))
    except ValidationError as exc:
        errors = _field_errors(exc, data)
    # raised outside the handler: no chained ValidationError (its text shows the inputs)
    raise ParamsError(Problem.INVALID, errors)


def _field_errors(exc: ValidationError, data: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        path, note = _as_sent(err["loc"], data)
        message = err["msg"]
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            message = "has a field that is not allowed"
        elif err["type"] == "model_type":  # not "... or instance of OpenAIParams"
            message = "must be an object"
        error = FieldError(field=_field_name(path, "body"), message=message + note)
        if error not in errors:
            errors.append(error)
    return errors


def _as_sent(loc: Sequence[str | int], data: Mapping[str, Any]) -> tuple[list[str | int], str]:
    """The error's path with a form's list positions given back as the indices the sender
    wrote (``openai[messages][0]``, ``[5]``: the second message is ``openai.messages.5``, not
    the ``1`` of its position), and a note for the message when one is too long to repeat
    (:func:`_field_name`): then the path keeps the position, and the note says it is one.
    """
    path: list[str | int] = []
    note = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, FormList) and 0 <= part < len(node):
            index = node.indices[part]
            if len(index) <= _INDEX_DIGITS:
                path.append(index)
            else:
                path.append(part)
                note = (
                    f" (position {part}, counting from 0 in the order of the form's indices:"
                    " the index sent is too long to repeat)"
                )
        else:
            path.append(part)
        if isinstance(node, Mapping) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return path, note


def _field_name(path: Sequence[str | int], fallback: str) -> str:
    """The dotted path, cut at the first name the contract does not know.

    Names are client input and could be anything, even a secret (a card number is all
    digits); only the contract's own vocabulary and positions in its lists are ever repeated
    back: a validation error's list index, or a form's index under a list field
    (``openai[messages][0]``, as the sender wrote it) small enough to be one.
    """
    known: list[str] = []
    for part in path:
        if isinstance(part, int) or part in _VOCABULARY or _form_index(known, part):
            known.append(str(part))
        else:
            break
    return ".".join(known)[:200] or fallback


def _form_index(known: list[str], part: str) -> bool:
    # a form has at most MAX_FIELDS fields, so its lists too: more digits make a name
    return (
        bool(known)
        and known[-1] in _LISTS
        and part.isascii()
        and part.isdigit()
        and len(part) <= _INDEX_DIGITS
    )


# --- parsing one HTTP request ---------------------------------------------------------------

_CONTRACT = (GenerateParams, OpenAIParams, UsageLimitParams, Message)
_VOCABULARY = ENVELOPE.union(*(model.model_fields for model in _CONTRACT))
_LISTS = frozenset(
    name
    for model in _CONTRACT
    for name, field in model.model_fields.items()
    if get_origin(field.annotation) is list
)
_INDEX_DIGITS = len(str(MAX_FIELDS - 1))


def legacy_security_key(content_type: str, body: bytes) -> str | None:
    """The ``key`` field of a legacy Talkable webhook (its security key), if it has one.

    Legacy webhooks authenticate with this field rather than ``x-talkable-signature``. Call
    it only on a body :func:`parse_request` accepted; anything unreadable gives ``None``.
    """
    try:
        tree = decode_body(content_type or "", body)
    except FormError:
        return None
    key = tree.get("key")
    is_legacy = "extras" in tree or "payload" in tree
    return key if is_legacy and isinstance(key, str) and key else None


def parse_request(
    content_type: str,
    body: bytes,
    query: str | Mapping[str, str] | Mapping[str, list[str]] | None = None,
    *,
    max_body_bytes: int | None = None,
) -> GenerateParams:
    """Turn one HTTP request's content into :class:`GenerateParams`, or raise ParamsError.

    Body shapes, by media type: JSON (``application/json``, ``text/json``, ``*+json``, or no
    content type), ``application/x-www-form-urlencoded`` and ``multipart/form-data`` with
    Rails-style nesting (``models.forms``). Anything else is unsupported. An empty body is ``{}``.

    A legacy Talkable webhook (a body with ``extras`` and/or ``payload``, as objects or as JSON
    strings, beside ``key``/``site``/``type``) is unwrapped by deep merge, later wins:
    ``payload`` (Talkable's event data: lowest), then ``extras`` (the marketer's configured
    params), then any other top-level fields (explicit params: highest). ``site`` comes from the
    webhook's own ``site`` only when the merged params lack one (or it is blank); the webhook's
    ``key`` (its security key) and ``type`` never become params.

    Query-string params are decoded like a form and merged under the body (the body wins).
    ``query`` may be the raw query string as sent (percent-encoded; one that is not UTF-8 is
    unreadable), a multidict (every pair, in order, as aiohttp gives it) or a mapping of
    names to one value or a list of values; a plain mapping loses the order *between* names,
    so arrays of hashes in it need indices (``m[0][role]``) rather than ``m[][role]``.
    Merging is deep: objects merge key by key; lists and scalars replace whole.

    Problems: too large, over ``max_body_bytes`` (checked first); unsupported content type;
    unreadable body or query; invalid params (``extras``/``payload`` that are not JSON objects
    included).
    """
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise _error(Problem.TOO_LARGE, "body", f"larger than {max_body_bytes} bytes")
    try:
        tree = unwrap_legacy(decode_body(content_type or "", body))
        if query:
            tree = merge(decode_query(query), tree)
    except FormError as exc:
        error = _error(exc.problem, _field_name(exc.path, exc.field), exc.message)
    else:
        return from_mapping(tree)
    raise error  # outside the handler: nothing chained


def refuse_content_type(content_type: str) -> None:
    """Raises :class:`ParamsError` (unsupported) for a ``Content-Type`` :func:`parse_request`
    refuses whatever the body (not JSON, form or multipart; a form not in UTF-8), so it can be
    refused before the body is read."""
    try:
        refuse_media(content_type)
    except FormError as exc:
        error = _error(exc.problem, exc.field, exc.message)
    else:
        return
    raise error  # outside the handler: nothing chained


def claimed_site(
    content_type: str,
    body: bytes,
    query: str | Mapping[str, str] | Mapping[str, list[str]] | None = None,
) -> str | None:
    """The site a webhook names, read as :func:`parse_request` reads it but whatever its other
    params are: the body's own first (a signed request's params are its body's), else with the
    query string merged under it. ``None`` when neither can be read or names a site slug.

    For refusing an unsigned request for a signing site before its params are judged: the
    sender of an invalid webhook learns nothing about them until it is known."""
    for merged in (None, query) if query else (None,):
        try:
            tree = unwrap_legacy(decode_body(content_type or "", body))
            if merged:
                tree = merge(decode_query(merged), tree)
            value = tree.get("site")
            if isinstance(value, str):
                return GenerateParams._site(value)
        except (FormError, ValueError):
            continue
    return None
