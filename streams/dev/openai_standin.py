"""A stand-in for OpenAI's Chat Completions API (``POST /v1/chat/completions``).

Speaks the real wire format (response object, ``{"error": {...}}`` envelope, ``retry-after`` and
``x-ratelimit-*`` headers), so the official ``openai`` SDK works against it unchanged. The text is
deterministic: derived from the model and messages, cut to ``max_tokens`` whitespace-split words;
its ``usage`` counts about a token for every 4 characters (the prompt: of the messages' content,
at least 1; the completion: at most its ``max_tokens``).

Faults come from a mutable :class:`OpenAIStandinConfig`, applied per call in this order:
``latency_seconds`` → ``fail_next`` → ``hang_every`` → auth (missing key, ``unauthorized_keys``)
→ ``insufficient_quota_keys`` → ``unknown_models`` → the key's rate limits → ``rate_limit_every``
/``rate_limit_fraction`` → ``fail_500_every`` (every N-th of the calls no fault before it
answered, so it fires beside the 429s) → body validation → the generation's own time
(``seconds_per_token`` for each token of its ``max_tokens``: a long one outlasts a client's
timeout while short ones do not).

Rate limits are per organisation and model, as OpenAI's are: every key of an organisation
draws on the same buckets. A key is its own organisation (an id made from it) unless
``organizations`` lists it under one (``{"org-agency": [key, key2]}``: two sites of one agency).
Requests and tokens per minute (``model_limits`` for a model on every key, else ``key_limits``
for each model of an organisation, by its id, or of a key, else ``default_rpm``/
``default_tpm``), each a bucket with continuous refill holding
``burst_seconds`` of its rate. A call takes 1 request and its prompt (about 4 characters a
token) plus ``max_tokens`` tokens, when it is admitted (one of more tokens than the bucket
holds, within the minute's, is admitted by a full bucket, which it leaves below empty for the
calls after it); one that does not fit is refused with
OpenAI's 429 ``rate_limit_exceeded`` ("... Please try again in 1.234s."), without a
``retry-after`` unless ``limit_retry_after`` is set; one that costs more than the key's tokens
a minute, with OpenAI's 429 "Request too large ... The input or output tokens must be reduced"
(no wait fits it, so it says none); both name the organisation ("... in organization
org-agency on requests per min (RPM) ..."). Every answer carries the organisation's
``x-ratelimit-*`` headers and its id in ``openai-organization``, unless ``limit_headers`` is
off (a compatible server or a proxy that drops them: the 429 bodies alone say the limit, the
wait and the organisation); so do the 429s of ``rate_limit_every`` and ``rate_limit_fraction``
(requests left: 0), a 429 no pace of the key's foresees (another client of the organisation's),
where ``fail_next``'s, given before the key is read, say generic ones. A key in
``insufficient_quota_keys`` gets OpenAI's 429 ``insufficient_quota``, or another of its answers
for an account no wait lets call (``quota_answer``: a spend limit's or the credit's 429 code,
``billing_not_active``, ``access_terminated``, the older 400 ``billing_hard_limit_reached``); a
model in ``unknown_models`` its 404 ``model_not_found``, or what an OpenAI-compatible server
answers instead (``unknown_model_answer``: Ollama's and vLLM's 404,
LiteLLM's proxy's 400, LocalAI's 500 (its 2.x "could not load model"), none with OpenAI's code;
Azure OpenAI's 404 ``DeploymentNotFound``). A key in
``refusal_keys`` is answered 200 with the model's refusal (``message.refusal``, no content), one
in ``content_filter_keys`` with what the filter left of a text (``finish_reason:
content_filter``): billed answers without a text, after the limits and validation. A reasoning
model (``o1``, ``o3-mini``, ``gpt-5``, ..., or a name in ``reasoning_deployments``: one
deployed under a name of its own, as on Azure) given ``max_tokens`` gets OpenAI's 400
``unsupported_parameter`` (they take ``max_completion_tokens``). A message's optional
``name`` (the participant's) is taken when it is 1 to 64 letters, digits, underscores or
hyphens, else refused with OpenAI's 400 ``invalid_value``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from streams.dev.standin_common import (
    JSON,
    CallLog,
    StandinHandle,
    add_control_routes,
    bearer_key,
    common_faults,
    every,
    fraction_hit,
    key_tail,
    new_app,
    read_json,
    run_blocking,
    start,
    value_kind,
)

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# reasoning models (and their fine-tunes) refuse ``max_tokens`` (they take
# ``max_completion_tokens``), as OpenAI's do
REASONING_MODELS = re.compile(r"(?:ft:)?(?:o\d|gpt-5)")
# a message's optional ``name``: OpenAI refuses another ("string does not match pattern")
PARTICIPANT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
REQUEST_LIMIT = 10_000


@dataclass
class OpenAIStandinConfig:
    latency_seconds: float = 0.0
    # a generation also takes this long per token of its max_tokens (a model writing up to
    # its limit): a long one outlasts a client's timeout while short ones do not
    seconds_per_token: float = 0.0
    rate_limit_every: int = 0  # 429 every N-th call; 0 = off
    rate_limit_fraction: float = 0.0  # 429 on this fraction of calls, evenly spread
    retry_after: str = "1"  # seconds, sent as the retry-after header of a 429
    fail_500_every: int = 0  # 500 every N-th call the faults before it left; 0 = off
    hang_every: int = 0  # never answer every N-th call (well: after hang_seconds)
    hang_seconds: float = 600.0
    unauthorized_keys: set[str] = field(default_factory=set)
    fail_next: list[int] = field(default_factory=list)  # statuses for the next calls, FIFO
    # limits: {"rpm": requests per minute, "tpm": tokens per minute (optional)}, per
    # organisation (by its id) or key (each model counted apart), or per model (on every key;
    # before the organisation's)
    key_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    # organisation id -> its keys, which share its limits (a key not listed: its own)
    organizations: dict[str, set[str]] = field(default_factory=dict)
    model_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    default_rpm: float = 1_000_000.0  # (these and the limits: above 0, RATES)
    default_tpm: float = 1_000_000_000.0
    burst_seconds: float = 1.0  # what a bucket holds, in seconds of its rate
    limit_retry_after: bool = False  # send retry-after on a rate-limit 429 (OpenAI often does not)
    # send the key's x-ratelimit-* headers on every answer; False: as an OpenAI-compatible
    # server or a proxy that drops them, whose 429 bodies alone say the limit and the wait
    limit_headers: bool = True
    insufficient_quota_keys: set[str] = field(default_factory=set)
    # what those keys are answered: OpenAI's 429 ``insufficient_quota``, or one of its other
    # answers for an account that no wait lets call (``QUOTA_ANSWERS``)
    quota_answer: Literal[
        "insufficient_quota",
        "credit_balance_exhausted",
        "organization_spend_limit_exceeded",
        "project_spend_limit_exceeded",
        "organization_usage_limit_exceeded",
        "billing_not_active",
        "access_terminated",
        "billing_hard_limit_reached",
    ] = "insufficient_quota"
    unknown_models: set[str] = field(default_factory=set)
    # whose answer to a model in unknown_models: OpenAI's, or an OpenAI-compatible server's
    unknown_model_answer: Literal["openai", "ollama", "vllm", "litellm", "localai", "azure"] = (
        "openai"
    )
    # answered 200 without a text, as OpenAI answers a prompt it will not write for: the
    # model's refusal (``message.refusal``), or a text its filter cut (``content_filter``)
    refusal_keys: set[str] = field(default_factory=set)
    content_filter_keys: set[str] = field(default_factory=set)
    # models that refuse ``max_tokens`` beside the reasoning models' names (``o1``, ``gpt-5``,
    # ...): a reasoning model by another name, as an Azure deployment's name is one
    reasoning_deployments: set[str] = field(default_factory=set)


class Bucket:
    """A continuously refilling bucket: ``rate`` units a second, at most ``capacity``."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level, self.at = capacity, time.monotonic()

    def refill(self, rate: float, capacity: float) -> None:
        now = time.monotonic()
        self.level = min(capacity, self.level + (now - self.at) * self.rate)
        self.rate, self.capacity, self.at = rate, capacity, now

    def take(self, amount: float) -> float:
        """0 if taken, else the seconds until ``amount`` would fit. An amount larger than the
        bucket (a call of more than a second's tokens, within the minute's) fits a full one,
        which it leaves below empty: the calls after it wait until it has refilled."""
        need = min(amount, self.capacity)
        if self.level >= need:
            self.level -= amount
            return 0.0
        return (need - self.level) / self.rate

    def reset_seconds(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass
class KeyLimits:
    organization: str
    rpm: float
    tpm: float
    requests: Bucket
    tokens: Bucket


@dataclass
class _State:
    config: OpenAIStandinConfig
    calls: CallLog
    limits: dict[tuple[str, str], KeyLimits] = field(default_factory=dict)

    def organization_of(self, key: str) -> str:
        """The organisation the key belongs to: the one ``organizations`` lists it under, else
        its own (an id made from the key, not the key: ``org-`` and 12 hex digits)."""
        for org, keys in self.config.organizations.items():
            if key in keys:
                return org
        return "org-" + hashlib.sha256(f"organization of {key}".encode()).hexdigest()[:12]

    def limits_of(self, key: str, model: str) -> KeyLimits:
        """The buckets of the key's organisation for the model, refilled to now (and resized
        if its limits changed)."""
        config = self.config
        org = self.organization_of(key)
        given = (
            config.model_limits.get(model)
            or config.key_limits.get(org)
            or config.key_limits.get(key, {})
        )
        rpm, tpm = given.get("rpm", config.default_rpm), given.get("tpm", config.default_tpm)
        burst = config.burst_seconds
        known = self.limits.get((org, model))
        if known is None:
            known = self.limits[org, model] = KeyLimits(
                org,
                rpm,
                tpm,
                Bucket(rpm / 60, rpm / 60 * burst),
                Bucket(tpm / 60, tpm / 60 * burst),
            )
        known.rpm, known.tpm = rpm, tpm
        known.requests.refill(rpm / 60, max(rpm / 60 * burst, 1.0))
        known.tokens.refill(tpm / 60, tpm / 60 * burst)
        return known


STATE = web.AppKey("openai_standin", _State)

_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
# OpenAI's answers for an account no wait lets call, by ``quota_answer``: (status, message,
# type, code). Its billing and spend limits (since 2025) are 429s whose ``code`` says which,
# their ``type`` still ``insufficient_quota``; a billing not set up (``billing_not_active``) and
# an account closed for its use (``access_terminated``, no code) are 429s of their own types;
# its older hard limit, a 400
QUOTA_ANSWERS: dict[str, tuple[int, str, str, str | None]] = {
    "insufficient_quota": (429, _QUOTA, "insufficient_quota", "insufficient_quota"),
    **{
        code: (429, _QUOTA, "insufficient_quota", code)
        for code in (
            "credit_balance_exhausted",
            "organization_spend_limit_exceeded",
            "project_spend_limit_exceeded",
            "organization_usage_limit_exceeded",
        )
    },
    "billing_not_active": (
        429,
        "Your account is not active, please check your billing details on our website.",
        "billing_not_active",
        "billing_not_active",
    ),
    "access_terminated": (
        429,
        "Your access was terminated due to violation of our policies, please check your email "
        "for more information. If you believe this is in error and would like to appeal, please "
        "contact us through our help center at help.openai.com.",
        "access_terminated",
        None,
    ),
    "billing_hard_limit_reached": (
        400,
        "Billing hard limit has been reached",
        "invalid_request_error",
        "billing_hard_limit_reached",
    ),
}


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _unknown_model(model: str, server: str) -> web.Response:
    """The answer to a model the server does not serve: OpenAI's ``model_not_found``, or an
    OpenAI-compatible server's, without that code (each as the server writes it)."""
    if server == "ollama":  # its /v1: its own error, in OpenAI's envelope
        message = f"model {json.dumps(model)} not found, try pulling it first"
        return _error(404, message, "api_error")
    if server == "vllm":
        error = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError"}
        return web.json_response({"error": {**error, "param": "model", "code": 404}}, status=404)
    if server == "litellm":  # its proxy's: a 400, its exception's detail for a message
        detail = {
            "error": f"/chat/completions: Invalid model name passed in model={model}. Call "
            "`/v1/models` to view available models for your key."
        }
        error = {"message": str(detail), "type": "None", "param": "None", "code": "400"}
        return web.json_response({"error": error}, status=400)
    if server == "localai":  # 2.x: no file for it, after trying each backend (later: a 404)
        message = (
            "could not load model - all backends returned error: 2 errors occurred:\n\t* could"
            " not load model: rpc error: code = Unknown desc = stat /build/models/"
            f"{model}: no such file or directory\n\t* grpc process not found:"
            " /tmp/localai/backend_data/backend-assets/grpc/stablediffusion\n\n"
        )
        body = {"error": {"code": 500, "message": message, "type": ""}}
        return web.json_response(body, status=500)
    if server == "azure":  # its /openai/v1: the model is a deployment's name
        message = (
            "The API deployment for this resource does not exist. If you created the deployment"
            " within the last 5 minutes, please wait a moment and try again."
        )
        error = {"code": "DeploymentNotFound", "message": message}
        return web.json_response({"error": error}, status=404)
    message = f"The model `{model}` does not exist or you do not have access to it."
    return _error(404, message, code="model_not_found")


def _rate_headers(remaining: int, retry_after: str | None = None) -> dict[str, str]:
    headers = {
        "x-request-id": f"req_{uuid.uuid4().hex}",
        "x-ratelimit-limit-requests": str(REQUEST_LIMIT),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-tokens": "2000000" if remaining else "0",
        "x-ratelimit-reset-tokens": "1s",
    }
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return headers


def duration(seconds: float) -> str:
    """Seconds as OpenAI writes them (Go's durations, to the millisecond): ``20ms``,
    ``1.234s``, ``6m0s``, ``1h2m3.5s``; never ``1m60s``."""
    ms = max(round(seconds * 1000), 1)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    said = f"{hours}h" if hours else ""
    said += f"{minutes}m" if hours or minutes else ""
    return said + f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def _limit_headers(limits: KeyLimits, sent: bool = True) -> dict[str, str]:
    """The organisation's ``x-ratelimit-*`` headers: limits per minute, what is left of the
    minute's worth in proportion to the buckets, and when they would be full again; and its
    id (``sent`` False: none of them)."""
    if not sent:
        return {"x-request-id": f"req_{uuid.uuid4().hex}"}
    requests, tokens = limits.requests, limits.tokens
    tokens_left = limits.tpm * max(tokens.level, 0) / tokens.capacity  # (a large call: below 0)
    return {
        "x-request-id": f"req_{uuid.uuid4().hex}",
        "openai-organization": limits.organization,
        "x-ratelimit-limit-requests": f"{limits.rpm:.0f}",
        "x-ratelimit-remaining-requests": f"{limits.rpm * requests.level / requests.capacity:.0f}",
        "x-ratelimit-reset-requests": duration(requests.reset_seconds()),
        "x-ratelimit-limit-tokens": f"{limits.tpm:.0f}",
        "x-ratelimit-remaining-tokens": f"{tokens_left:.0f}",
        "x-ratelimit-reset-tokens": duration(tokens.reset_seconds()),
    }


def _token_cost(body: Any) -> int:
    """What OpenAI counts a call against tokens per minute when it admits it."""
    if not isinstance(body, dict):
        return 0
    found = body.get("messages")
    messages: list[Any] = found if isinstance(found, list) else []
    characters = sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict))
    limit = _max_tokens(body) or 16
    return characters // 4 + len(messages) * 4 + (limit if isinstance(limit, int) else 16)


def _max_tokens(body: JSON) -> Any:
    """The completion's limit as the call gave it (None: none given)."""
    return body.get("max_completion_tokens") or body.get("max_tokens")


def _over_limit(state: _State, key: str, body: Any, model: Any) -> web.Response | None:
    """A 429 as OpenAI writes it when the call does not fit the limits of the key's
    organisation for the model, else None (the call's request and tokens are taken)."""
    limits = state.limits_of(key, str(model))
    cost = _token_cost(body)
    if cost > limits.tpm:  # more than a minute's tokens: no wait fits it
        message = (
            f"Request too large for {model or 'the model'} in organization "
            f"{limits.organization} on tokens per min (TPM): Limit {limits.tpm:.0f}, "
            f"Requested {cost}. The input or output tokens must be reduced in order to run "
            "successfully. Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        headers = _limit_headers(limits, state.config.limit_headers)
        return _error(429, message, "tokens", code="rate_limit_exceeded", headers=headers)
    wait = limits.requests.take(1)
    lane, limit, used, asked = "requests per min (RPM)", limits.rpm, limits.rpm, 1
    if not wait:
        wait = limits.tokens.take(cost)
        if wait:
            limits.requests.level += 1  # not admitted: give the request back
            lane, limit, asked = "tokens per min (TPM)", limits.tpm, cost
            used = limits.tpm * min(1 - limits.tokens.level / limits.tokens.capacity, 1.0)
    if not wait:
        return None
    message = (
        f"Rate limit reached for {model or 'the model'} in organization {limits.organization} "
        f"on {lane}: "
        f"Limit {limit:.0f}, Used {used:.0f}, Requested {asked}. Please try again in "
        f"{duration(wait)}. Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    headers = _limit_headers(limits, state.config.limit_headers)
    if state.config.limit_retry_after:
        headers["retry-after-ms"] = str(max(round(wait * 1000), 1))
    kind = "requests" if asked == 1 else "tokens"
    return _error(429, message, kind, code="rate_limit_exceeded", headers=headers)


def _status_error(
    status: int, config: OpenAIStandinConfig, limits: dict[str, str] | None = None
) -> web.Response:
    """The error OpenAI sends for ``status`` (used by ``fail_next`` and the schedules); a 429
    with the key's organisation's ``limits`` headers (``_limit_headers``) when given, its
    requests left at 0, else generic ones."""
    if status == 429:
        message = "Rate limit reached for requests (stand-in). Please try again later."
        headers = _rate_headers(0, config.retry_after)
        if limits is not None:
            headers = {**limits, "retry-after": config.retry_after}
            if "x-ratelimit-remaining-requests" in headers:
                headers["x-ratelimit-remaining-requests"] = "0"
        return _error(429, message, "requests", code="rate_limit_exceeded", headers=headers)
    if status == 401:
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    if status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return _error(status, message, "server_error")
    return _error(status, f"Injected failure with status {status}.")


def _incorrect_key(key: str) -> web.Response:
    """OpenAI's 401 for a key it does not know, which echoes the key masked (its start and its
    last 4 characters): what the client must not pass on."""
    masked = f"{key[:8]}{'*' * max(len(key) - 12, 4)}{key[-4:]}"
    message = (
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return _error(401, message, code="invalid_api_key")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _validate(body: Any, reasoning_deployments: set[str]) -> web.Response | None:
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        message = "Missing required parameter: 'messages'."
        return _error(400, message, param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        message = "Invalid 'messages': expected a non-empty array of message objects."
        return _error(400, message, param="messages", code="empty_array")
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            # the field and what it takes, never the value sent (a key pasted into a
            # message's role ended in the client's log), as the /_control 400 says it
            role = msg.get("role") if isinstance(msg, dict) else None
            message = (
                f"Invalid value for '{param}.role': expected one of {', '.join(ROLES)}, "
                f"got {value_kind(role)}."
            )
            return _error(400, message, param=f"{param}.role", code="invalid_value")
        content = msg.get("content")
        if content is None and msg["role"] != "assistant":
            message = f"Missing required parameter: '{param}.content'."
            return _error(400, message, param=f"{param}.content", code="missing_required_parameter")
        if content is not None and not isinstance(content, str | list):
            message = f"Invalid type for '{param}.content': expected a string or array."
            return _error(400, message, param=f"{param}.content", code="invalid_type")
        invalid_name = _invalid_name(msg, param)
        if invalid_name is not None:
            return invalid_name
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            return _error(400, f"Invalid type for '{name}': expected an integer.", param=name)
        if isinstance(limit, int) and limit < 1:
            return _error(400, f"Invalid '{name}': must be at least 1.", param=name)
    reasoning = REASONING_MODELS.match(model) or model in reasoning_deployments
    if body.get("max_tokens") is not None and reasoning:
        message = (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead."
        )
        return _error(400, message, param="max_tokens", code="unsupported_parameter")
    if body.get("stream"):
        return _error(400, "stream=true is not supported by the stand-in.", param="stream")
    return None


def _invalid_name(msg: JSON, param: str) -> web.Response | None:
    """OpenAI's 400 for a message's optional ``name`` (the participant's) that it does not
    take, else None."""
    if "name" not in msg:
        return None
    name = msg["name"]
    if not isinstance(name, str):
        message = f"Invalid type for '{param}.name': expected a string."
        return _error(400, message, param=f"{param}.name", code="invalid_type")
    if not PARTICIPANT_NAME.fullmatch(name):
        message = (
            f"Invalid '{param}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'."
        )
        return _error(400, message, param=f"{param}.name", code="invalid_value")
    return None


def completion_text(model: str, messages: list[JSON], max_tokens: int | None) -> tuple[str, bool]:
    """The deterministic reply and whether it was cut short by ``max_tokens`` (words)."""
    users = [m for m in messages if m.get("role") == "user"]
    last = _content_text((users or messages)[-1].get("content"))
    canonical = json.dumps([model, messages], sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    text = f"Generated for: {last[:60]} [{digest}]"
    words = text.split()
    if max_tokens is not None and len(words) > max_tokens:
        return " ".join(words[:max_tokens]), True
    return text, False


def _tokens(text: str) -> int:
    """About as many tokens as OpenAI's usage counts for ``text``: one for every 4 characters
    or so of English, never fewer than its words. Its words alone undercounted: a
    6,000-character prompt with few spaces was 2 prompt tokens."""
    return max(len(text.split()), -(-len(text) // 4))


def _completion(body: JSON, refused: bool = False, filtered: bool = False) -> JSON:
    model: str = body["model"]
    messages: list[JSON] = body["messages"]
    max_tokens = _max_tokens(body)
    text, truncated = completion_text(model, messages, max_tokens)
    message: JSON = {"role": "assistant", "content": text, "refusal": None}
    finish = "length" if truncated else "stop"
    if refused:
        message = {**message, "content": None, "refusal": "I'm sorry, I can't help with that."}
        text = message["refusal"]
    elif filtered:
        text = " ".join(text.split()[:2])
        message, finish = {**message, "content": text}, "content_filter"
    prompt_tokens = max(1, _tokens("".join(_content_text(m.get("content")) for m in messages)))
    # a text cut at its cap used every token of it, as OpenAI's (finish_reason "length")
    completion_tokens = min(_tokens(text), max_tokens) if max_tokens else _tokens(text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_standin",
    }


async def _answer(app: web.Application, key: str | None, body: Any, rec: JSON) -> web.Response:
    config, calls, n = app[STATE].config, app[STATE].calls, rec["n"]
    injected = await common_faults(app, config, rec, lambda s: _status_error(s, config))
    if injected is not None:
        return injected
    if key is None:
        rec["fault"] = "no_key"
        return _error(401, "You didn't provide an API key. Use 'Authorization: Bearer <key>'.")
    if key in config.unauthorized_keys:
        rec["fault"] = "unauthorized"
        return _incorrect_key(key)
    model = body.get("model") if isinstance(body, dict) else None
    if key in config.insufficient_quota_keys:
        rec["fault"] = config.quota_answer
        status, message, kind, code = QUOTA_ANSWERS[config.quota_answer]
        org = {"openai-organization": app[STATE].organization_of(key)}
        headers = org if config.limit_headers else None
        return _error(status, message, kind, code=code, headers=headers)
    if model in config.unknown_models:
        rec["fault"] = "model_not_found"
        return _unknown_model(str(model), config.unknown_model_answer)
    throttled = _over_limit(app[STATE], key, body, model)
    if throttled is not None:
        rec["fault"] = "key_limit"
        return throttled
    if every(config.rate_limit_every, n) or fraction_hit(config.rate_limit_fraction, n):
        rec["fault"] = "rate_limit"
        # the organisation's limits, as every answer says them, nothing left: its generic
        # headers said 10,000 a minute whatever the key's, which a pacer took as the limit
        limits = _limit_headers(app[STATE].limits_of(key, str(model)), config.limit_headers)
        return _status_error(429, config, limits)
    # the calls the faults before it left, not every call: rate_limit_fraction 0.5 answers
    # the even calls, and fail_500_every 2 or 4, counting every call, fell on those alone
    if every(config.fail_500_every, calls.reach("fail_500")):
        rec["fault"] = "fail_500"
        return _status_error(500, config)
    invalid = _validate(body, config.reasoning_deployments)
    if invalid is not None:
        return invalid
    writing = config.seconds_per_token * (_max_tokens(body) or 16)
    if writing > 0:
        await asyncio.sleep(writing)
    headers = _limit_headers(app[STATE].limits_of(key, str(model)), config.limit_headers)
    refused, filtered = key in config.refusal_keys, key in config.content_filter_keys
    if refused or filtered:
        rec["fault"] = "refusal" if refused else "content_filter"
    return web.json_response(_completion(body, refused, filtered), headers=headers)


async def chat_completions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json(request)
    key = bearer_key(request)
    given = body if isinstance(body, dict) else {}
    rec = state.calls.start(
        method=request.method,
        path=request.path,
        model=given.get("model"),
        max_tokens=given.get("max_tokens"),
        max_completion_tokens=given.get("max_completion_tokens"),
        user=given.get("user"),  # the end-user id the caller gave: a test's tag of its request
        key_tail=key_tail(key),
    )
    response = await _answer(request.app, key, body, rec)
    state.calls.finish(rec, response.status)
    logger.debug("chat completion n=%s status=%s fault=%s", rec["n"], response.status, rec["fault"])
    return response


# the settings that are rates (requests or tokens a minute): a bucket of 0 divided by zero at
# the next call, a 500 of the stand-in's own
RATES = frozenset({"key_limits", "model_limits", "default_rpm", "default_tpm"})


def build_app(config: OpenAIStandinConfig | None = None) -> web.Application:
    state = _State(config or OpenAIStandinConfig(), CallLog())
    app = new_app()
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    secret = frozenset(
        {
            "unauthorized_keys",
            "insufficient_quota_keys",
            "key_limits",
            "refusal_keys",
            "content_filter_keys",
            "organizations",
        }
    )
    add_control_routes(app, state.config, state.calls, secret, frozenset({"fail_next"}), RATES)
    return app


async def serve(
    config: OpenAIStandinConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> StandinHandle[OpenAIStandinConfig]:
    """Start on a real socket; ``handle.url`` (``.../v1``) is the SDK's ``base_url``."""
    app = build_app(config)
    state = app[STATE]
    return await start(app, state.config, state.calls, host, port, "/v1")


def run(
    host: str = "127.0.0.1",
    port: int = 8081,
    config: OpenAIStandinConfig | None = None,
    on_ready: Callable[[StandinHandle[OpenAIStandinConfig]], None] | None = None,
) -> None:
    """Serve until interrupted (the ``talkstream standin openai`` command)."""
    run_blocking(lambda: serve(config, host, port), on_ready)
