"""OpenAI Chat Completions adapter: one call, per-request keys, every answer classified.

It makes exactly one call (the SDK's own retries are off: ``max_retries=0``) and says what the
answer means, as data on :class:`~streams.errors.GenerationError`; waiting and retrying are
the scheduler's (``streams.upstream``), deciding about the request is the ledger's:

    answer                               reason              the scheduler
    200 with text                        (success)           reports it; learns the limits
    429 rate_limit_exceeded              RateLimited         waits (retry-after, "try again")
    429 "Request too large" (TPM)        RequestTooLarge     reports: no wait lets it run
    429 insufficient_quota (or its codes InsufficientQuota   reports; refuses the key a while
      credit_balance_exhausted, *_spend_
      limit_exceeded, organization_usage_
      limit_exceeded; billing_not_active;
      400 billing_hard_limit_reached; a
      compatible API's 402 Payment
      Required)
    429 access_terminated                Forbidden           reports; refuses the key a while
    401 invalid_api_key                  Unauthorized        reports; refuses the key a while
    403                                  Forbidden           reports; refuses the key a while
    404 model_not_found                  ModelNotFound       reports; refuses the model a while
    a compatible API's missing model:    ModelNotFound       reports; refuses the model a while
      404 naming it "not found" (Ollama,
      LocalAI) or "does not exist" (vLLM),
      400 "Invalid model name" (LiteLLM),
      500 "could not load model" with no
      file for it (LocalAI before its
      404), 404 DeploymentNotFound (Azure)
    400 unsupported_parameter for        BadRequest, resend  calls again at once, as the
      ``max_tokens`` sent for a model                          same try, with the cap as
      not known by name to refuse it                           ``max_completion_tokens``
      (an Azure deployment's name)                             (remembered for its key)
    400 content_filter (Azure OpenAI's   ContentFiltered     reports (the message names the
      content filter refused the prompt)                       categories it flagged)
    400/404/422 (anything else 4xx)      BadRequest          reports
    a redirected call's 404 or 405 (a    BadRequest          reports (the message says where
      GET without the body), 401 or 403                          the base URL moved to)
      (to another origin: without the key)
    5xx, 408, 409                        ServerError         waits (the circuit counts it)
    any of the above, with               (its reason)        ``false``: reports one that
      ``x-should-retry: false`` or                             would wait; ``true``: asks
      ``true`` (as OpenAI's client                             a refused request (4xx
      obeys it)                                                BadRequest...) again, 3 calls
                                                               in all; never a refused key
                                                               or model (401, 403, quota,
                                                               missing model: at once)
    timeout / connection error           Timeout/Unreachable waits (the circuit counts it)
    a TLS certificate that does not      CertificateError    reports (verified again, it
      verify (self-signed, another                             fails again; the message says
      host's, expired)                                         what OpenSSL said)
    200 without text / not JSON          EmptyCompletion/    asks again, ends it the third
      (no choices, empty or whitespace   BadAnswer           time (the key is up: no circuit)
      content; why is said)
    200 whose answer no retry changes:                       reports: one call, billed
      a refusal (``message.refusal``)    Refused
      ``finish_reason: content_filter``  ContentFiltered
      a tool call                        ToolCall
      no text before ``max_tokens``      MaxTokensTooLow
      (``finish_reason: length``)

Every answer's ``x-ratelimit-*`` headers travel with it (:class:`~streams.upstream.limits.Limits`).
Messages never carry the key: the SDK's messages are scrubbed of it (as it is, and as a URL
or a form encodes it) and of anything key-like. An error answer that is not OpenAI's JSON (a
proxy's page) says so, with its content type; a 404 other than a missing model (a base URL
without ``/v1``), a 405 and a 200 that is not JSON name the base URL to check (without its
credentials or query).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx2
import openai
from openai import AsyncOpenAI

from models.events import ChatRequest
from streams.errors import GenerationError, UpstreamError, status_error
from streams.upstream.limits import Limits, read_limits

KEYED_CLIENTS = 256
# the models, per key, that refused ``max_tokens`` under a name not known to refuse it (a
# reasoning model deployed under a name of its own, as on Azure): sent
# ``max_completion_tokens`` from then on. Only such refusals fill it: an LRU this size forgets
# one only after as many others were learned
KNOWN_COMPLETION_TOKENS_MODELS = 4096
E = TypeVar("E", bound=UpstreamError)
CERTIFICATE_ERROR = "CertificateError"  # an upstream's TLS certificate that does not verify
EMPTY_COMPLETION = "EmptyCompletion"  # a 200 without a text, which another call may not repeat
# what an upstream message may hold of a key besides the key itself: a key-like token
# ("sk-...", "key_..."), a bearer credential, or a key masked as OpenAI echoes it ("Incorrect API
# key provided: sk-proj-abc1****wxyz"), whatever its prefix (an OpenAI-compatible API's keys
# need not start with "sk"). Words are not keys: "API key provided" stays readable.
_KEYLIKE = re.compile(
    r"(?:sk|key)[-_][A-Za-z0-9*_\-]{6,}|Bearer\s+\S{6,}|[^\s:]*\*{4,}[^\s.,;:]*", re.IGNORECASE
)
# OpenAI's 429 for a call larger than the key's whole limit a minute: "Request too large for
# gpt-4o in organization org-… on tokens per min (TPM): Limit 30000, Requested 36278. The
# input or output tokens must be reduced in order to run successfully." (no "try again")
_ASKED = re.compile(r"Limit (\d+), (?:Used \d+, )?Requested (\d+)")
# OpenAI's reasoning models, which take the completion's cap as max_completion_tokens only: o1,
# o1-mini, o3, o3-mini, o4-mini, ..., the gpt-5 family, and their fine-tunes ("ft:o4-mini-...:
# org::id"); not a longer name's start ("o1x"), nor another family's (Ollama's "olmo2",
# "gpt-oss")
_REASONING_MODEL = re.compile(r"(?:ft:)?(?:o\d+|gpt-5)(?:[-.:@]|$)")
# a UTF-16 surrogate alone: JSON may escape one ("\ud83d", an emoji cut in two), json.loads
# keeps it, and no UTF-8 (Kafka's records, Talkable's API) can carry it
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# what no wait fixes, by the answer's ``code``, else its ``type``: the key's account cannot pay
# (a 429 like a rate limit's: OpenAI's ``insufficient_quota``; its credit, spend and usage limits
# since 2025, each a ``code`` of its own, whose ``type`` need not say ``insufficient_quota``;
# ``billing_not_active``, a billing not set up; the older 400 ``billing_hard_limit_reached``),
# may not call at all (``access_terminated``: a 429 closing the account for its use, without a
# code), or a key or a model it does not know
_REFUSALS: dict[str, tuple[str, Literal["key", "model"]]] = {
    "insufficient_quota": ("InsufficientQuota", "key"),
    "credit_balance_exhausted": ("InsufficientQuota", "key"),
    "organization_spend_limit_exceeded": ("InsufficientQuota", "key"),
    "project_spend_limit_exceeded": ("InsufficientQuota", "key"),
    "organization_usage_limit_exceeded": ("InsufficientQuota", "key"),
    "billing_not_active": ("InsufficientQuota", "key"),
    "billing_hard_limit_reached": ("InsufficientQuota", "key"),
    "access_terminated": ("Forbidden", "key"),
    "invalid_api_key": ("Unauthorized", "key"),
    "model_not_found": ("ModelNotFound", "model"),
    # Azure OpenAI's 404 {"error": {"code": "DeploymentNotFound", "message": "The API deployment
    # for this resource does not exist. If you created the deployment within the last 5
    # minutes, please wait a moment and try again."}}: on its /openai/v1 API (the one an
    # OpenAI client's base URL can name: its older per-deployment URLs need an ``api-version``
    # query and an ``api-key`` header) a request's model is the deployment's name
    "DeploymentNotFound": ("ModelNotFound", "model"),
}
# what an OpenAI-compatible API answers, without OpenAI's code, for a model it does not serve,
# by status; each names the model asked for ({m}), as the server quotes it. Ollama's /v1: 404
# {"error": {"message": "model \"llama9\" not found, try pulling it first", "type": "api_error"
# (later "not_found_error"), "code": null}} (some of its handlers: "model 'llama9' not found");
# vLLM: 404 {"message": "The model `llama9` does not exist.", "type": "NotFoundError", "code":
# 404} (later inside {"error": ...}); LiteLLM's proxy: 400 {"error": {"message": "{'error':
# '/chat/completions: Invalid model name passed in model=llama9. Call `/v1/models` to view
# available models for your key.'}", "type": "None", "code": "400"}} (its message once a JSON
# object, once without the period); LocalAI: 404 {"error": {"code": 404, "message": "model
# \"llama9\" not found. To see available models, call GET /v1/models", "type":
# "invalid_request_error"}}, and before it checked the name (2.x) 500 {"error": {"code": 500,
# "message": "could not load model - all backends returned error: 9 errors occurred:\n\t* could
# not load model: rpc error: code = Unknown desc = stat /models/llama9: no such file or
# directory\n\t* ...", "type": ""}}: its 500 only with no file for the model (a backend that
# crashed or ran out of memory, "could not load model: rpc error: ... EOF", is an outage). A 404
# of the path (a base URL without /v1) names no model.
_MISSING_MODEL = {
    404: "model \"{m}\" not found|model '{m}' not found|The model `{m}` does not exist",
    400: r"Invalid model name passed in model={m}(?!\.?[\w:/-])",  # (not a longer name's start)
    500: r"(?s)could not load model\b.*\bstat \S*/{m}: no such file or directory",
}


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool = False  # cut at the completion's cap (finish_reason length)


def token_cost(chat: ChatRequest) -> int:
    """What a call counts against tokens per minute, as OpenAI counts it when it admits the
    call: the prompt (about four characters a token) plus the completion's ``max_tokens``."""
    characters = sum(len(str(m.get("content", ""))) for m in chat.messages)
    return characters // 4 + len(chat.messages) * 4 + chat.max_tokens


def chat_body(chat: ChatRequest, completion_tokens: bool = False) -> dict[str, Any]:
    """The Chat Completions body: the model, the messages, the cap on the completion's tokens
    and every other param unchanged.

    The cap is the campaign's ``max_completion_tokens`` when it gives one (sent as it is, in
    ``extra``, and ``max_tokens`` not at all). Else it is ``max_tokens`` (the campaign's, or
    the default), sent under the name the model takes: ``max_completion_tokens`` for OpenAI's
    reasoning models, which refuse ``max_tokens`` (400 ``unsupported_parameter``: "Use
    'max_completion_tokens' instead"), ``max_tokens`` for every other. Not
    ``max_completion_tokens`` for all, although OpenAI's chat models take it too (``max_tokens``
    is deprecated in its favour): OpenAI-compatible servers (Ollama's and LM Studio's ``/v1``)
    know ``max_tokens`` only, and would ignore it, writing without a cap. ``completion_tokens``:
    the model is known to refuse ``max_tokens`` otherwise than by its name (it said so to an
    earlier call: :class:`ChatClient` remembers it).
    """
    if "max_completion_tokens" in chat.extra:
        cap = {}
    elif completion_tokens or takes_max_completion_tokens_only(chat.model):
        cap = {"max_completion_tokens": chat.max_tokens}
    else:
        cap = {"max_tokens": chat.max_tokens}
    return {"model": chat.model, "messages": chat.messages, **cap, **chat.extra}


def takes_max_completion_tokens_only(model: str) -> bool:
    """Whether the model refuses ``max_tokens``: OpenAI's reasoning models, by their names
    (``o1``, ``o3-mini``, ``o4-mini``, ``gpt-5``, ``gpt-5-mini``, ``gpt-5.1``, ..., and their
    fine-tunes, ``ft:o4-mini-2025-04-16:acme::abc123``). Another name for one (an Azure
    deployment's) is not known here: its first call learns it (OpenAI's 400 for
    ``max_tokens``), and :class:`ChatClient` sends it ``max_completion_tokens`` from then on."""
    return _REASONING_MODEL.match(model) is not None


class ChatClient:
    def __init__(self, base_url: str, timeout: float, max_connections: int = 1024) -> None:
        # the SDK's aiohttp transport (less CPU per call than httpx), with as many kept-alive
        # connections as calls may be in flight (the SDK's default keeps 100 alive of 1,000)
        limits = httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key="set-per-request",
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAioHttpClient(limits=limits, timeout=timeout),
        )
        self._by_key: dict[str, AsyncOpenAI] = {}
        # (key, model) that refused ``max_tokens`` under a name not known to (LRU)
        self._completion_tokens: dict[tuple[str, str], None] = {}
        self._base_url = shown_url(base_url)

    async def complete(self, chat: ChatRequest, api_key: str) -> tuple[Completion, Limits]:
        """One call: the completion and what the answer said about the key's limits.

        A model that refuses the cap as ``max_tokens`` (OpenAI's 400 ``unsupported_parameter``:
        "Use 'max_completion_tokens' instead"), sent so because its name is not known to refuse
        it (an Azure deployment's), is remembered for the key, and the refusal says to call
        again (``resend``): that call, and every later one for the model, sends the cap as
        ``max_completion_tokens``."""
        client = self._for_key(api_key)
        answer: httpx2.Response | None = None  # (a ValueError without one: no call was made)
        sent = chat_body(chat, self._takes_completion_tokens(api_key, chat.model))
        try:
            # the SDK's own POST with the body as Chat Completions takes it: every other
            # param unchanged (``create`` refuses unknown names and re-walks the body through
            # its typed transform, a measurable part of the generator's CPU)
            raw = await client.post("/chat/completions", body=sent, cast_to=httpx2.Response)
            answer = raw
            body = json.loads(raw.content)  # not the SDK's models: less CPU
        except openai.APIStatusError as exc:
            error = _answer_error(exc, api_key, self._base_url, chat.model)
            if "max_tokens" in sent and "max_tokens" not in chat.extra and refuses_max_tokens(exc):
                self._learned_completion_tokens(api_key, chat.model)
                error.resend = True
            raise obeyed(error, exc.response.headers.get("x-should-retry")) from None
        except openai.APIConnectionError as exc:  # (APITimeoutError is one)
            untrusted = certificate_failure(exc)
            if untrusted is not None:
                raise certificate_error(
                    GenerationError, "OpenAI", untrusted, self._base_url, "OPENAI", api_key
                ) from None
            failed = connection_failure(exc)
            if failed is None:
                timed_out = GenerationError("OpenAI timed out", reason="Timeout", retriable=True)
                raise timed_out from None
            raise GenerationError(
                f"OpenAI unreachable: {failed}", reason="Unreachable", retriable=True
            ) from None
        except openai.OpenAIError as exc:
            raise GenerationError(
                f"OpenAI client error: {scrub(str(exc), api_key)}", reason="ClientError"
            ) from None
        except ValueError as exc:
            if answer is None:
                # refused before the call, by the HTTP library (a base URL with credentials in
                # it, which settings now refuse at start: "Cannot combine AUTHORIZATION header
                # with ... credentials encoded in URL"). Taken for an outage, such a refusal
                # waited out MAX_WAIT_SECONDS at every request
                raise GenerationError(
                    f"OpenAI client error: {scrub(str(exc), api_key)} (no call was made; "
                    f"TALKSTREAM_OPENAI_BASE_URL is {self._base_url})",
                    reason="ClientError",
                ) from None
            kind_of = answer.headers.get("content-type", "").split(";")[0].strip()
            raise GenerationError(
                f"OpenAI answered {answer.status_code} with a body that is not JSON "
                f"({kind_of or 'no content type'}): is TALKSTREAM_OPENAI_BASE_URL "
                f"{self._base_url} OpenAI's API?",
                reason="BadAnswer",
                retriable=True,
                limits=read_limits(answer.headers, secret=api_key),
                answered=True,
            ) from None
        limits = read_limits(raw.headers, secret=api_key)
        text, why, reason, truncated = answer_text(body)
        if text is None:
            # each such answer may have been billed: asked again only when another answer may
            # hold a text (not a refusal, a filtered text, a tool call, a cap too low)
            raise GenerationError(
                f"OpenAI returned no text: {scrub(why, api_key)}",
                reason=reason,
                retriable=reason == EMPTY_COMPLETION,
                limits=limits,
                answered=True,
            )
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        completion = Completion(
            text=text,
            model=well_formed(str(body.get("model") or chat.model)),
            prompt_tokens=token_count(usage.get("prompt_tokens")),
            completion_tokens=token_count(usage.get("completion_tokens")),
            truncated=truncated,
        )
        return completion, limits

    def _for_key(self, api_key: str) -> AsyncOpenAI:
        """The shared client with this request's key; copies are kept per key (LRU), since
        building one per call is a measurable part of the generator's time."""
        client = self._by_key.pop(api_key, None)
        if client is None:
            client = self._client.with_options(api_key=api_key)
        self._by_key[api_key] = client  # most recently used last
        if len(self._by_key) > KEYED_CLIENTS:
            del self._by_key[next(iter(self._by_key))]
        return client

    def _takes_completion_tokens(self, api_key: str, model: str) -> bool:
        """Whether the model refused ``max_tokens`` to the key before (most recently used
        last)."""
        known = (api_key, model)
        if known not in self._completion_tokens:
            return False
        self._completion_tokens[known] = self._completion_tokens.pop(known)
        return True

    def _learned_completion_tokens(self, api_key: str, model: str) -> None:
        self._completion_tokens.pop((api_key, model), None)
        self._completion_tokens[(api_key, model)] = None
        if len(self._completion_tokens) > KNOWN_COMPLETION_TOKENS_MODELS:
            del self._completion_tokens[next(iter(self._completion_tokens))]

    async def close(self) -> None:
        self._by_key.clear()
        self._completion_tokens.clear()
        await self._client.close()


class Answer(NamedTuple):
    """What a 200 from Chat Completions holds: its text to publish, or None, why not, and the
    reason to report: ``EmptyCompletion`` (asked again: another answer may hold a text), or
    the reason of an answer no retry changes (each call of it billed)."""

    text: str | None
    why: str = ""
    reason: str = EMPTY_COMPLETION
    truncated: bool = False  # a text cut at the completion's cap (finish_reason length)


def answer_text(body: Any) -> Answer:
    """``choices[0].message.content`` of a chat completion when it is a text to publish;
    else None, why not (what the answer held instead) and the request's reason.

    Not a text, and asked again (``EmptyCompletion``): no choices (or an error envelope in a
    200), content that is empty or only whitespace (published, it would replace the person's
    text with nothing). Not a text, and the same prompt and params would get the same answer:
    a refusal (``message.refusal``: ``Refused``), content flagged by OpenAI's filter
    (``finish_reason: content_filter``: what is left of it was cut where the filter stopped it;
    ``ContentFiltered``), a tool call (the campaign's params ask for one: ``ToolCall``), no text
    before the completion's cap (``finish_reason: length``: a reasoning model spends its tokens
    on reasoning first; ``MaxTokensTooLow``). A text cut at ``max_tokens`` (``finish_reason:
    length``) is a text: the campaign's cap.
    """
    if not isinstance(body, Mapping):
        return Answer(None, "the answer is not a chat completion")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        _, _, error = _error_fields(body)
        return Answer(None, f"an error in a 200: {error}" if error else "no choices in the answer")
    choice: Mapping[str, Any] = choices[0] if isinstance(choices[0], Mapping) else {}
    found = choice.get("message")
    message: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    content, refusal = message.get("content"), message.get("refusal")
    if choice.get("finish_reason") == "content_filter":
        why = "finish_reason content_filter (OpenAI's content filter flagged the text)"
        return Answer(None, why, "ContentFiltered")
    if isinstance(refusal, str) and refusal.strip():
        return Answer(None, f"the model refused: {refusal.strip()}", "Refused")
    if message.get("tool_calls") or message.get("function_call"):
        why = "a tool call, not a text (do the campaign's openai.* params ask for one?)"
        return Answer(None, why, "ToolCall")
    if not isinstance(content, str) or not content.strip():
        why = f"the content is {_what_is(content)}"
        if choice.get("finish_reason") == "length":
            why += (
                " and finish_reason is length: the completion reached its max_tokens (or"
                " max_completion_tokens) before any text (a reasoning model spends them on"
                " reasoning first); raise it in the campaign"
            )
            return Answer(None, why, "MaxTokensTooLow")
        return Answer(None, why)
    return Answer(well_formed(content), truncated=choice.get("finish_reason") == "length")


def _what_is(content: Any) -> str:
    """What a content that is not a text is: absent, not a string, empty, only whitespace."""
    if content is None:
        return "absent"
    if not isinstance(content, str):
        return "not a string"
    return "empty" if not content else "only whitespace"


def token_count(value: Any) -> int:
    """A token count of the answer's ``usage``, or 0 when it is not a count (a string, a
    negative, a fraction, absurdly large): the text was made and paid for all the same."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return 0


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a pair was joined by json.loads):
    a result that cannot be encoded is never reported, and its request would wait out its
    deadlines and be generated again, to the same end."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def obeyed(error: GenerationError, should_retry: str | None) -> GenerationError:
    """The error as OpenAI's ``x-should-retry`` header says, as the official client obeys it
    (``_should_retry``: exactly ``"true"`` or ``"false"``, before it looks at the status),
    within what no header changes.

    ``false`` on an answer that would wait (a 429, a 5xx, a 408, a 409): OpenAI says another
    try will not help, so it is reported at once (its reason kept), not waited on until the
    maximum wait. ``true`` on a refusal of the request alone (a 400, 404, 422 or another 4xx
    ``BadRequest``, ``ContentFiltered``, ``RequestTooLarge``): OpenAI says another try may
    help, so it is asked again, as the client would (it tries 3 times in all), a few times and
    not as an outage: the upstream answered (``answered``: the scheduler's
    ``unusable_after``, 3 in all; it generated nothing, so its tokens go back), then reported
    with its own reason. Never on a refusal of the key or of the model (401, 403,
    ``insufficient_quota`` and the other codes of an account that cannot pay, a missing
    model): no retry makes a revoked key valid, and asked again, such a refusal did not stop
    the key's other calls (``refuses`` was lost), which each spent a call on it; it is
    reported at once and refuses its scope, as without the header. Nor on a refusal the
    adapter sends again at once in the way it asked (``resend``): it is asked again already,
    as the same try. On an answer already waited on, or already final, it changes nothing.
    """
    if should_retry == "false" and error.retriable:
        return GenerationError(
            _said(error, "x-should-retry: false, another try would not help: not asked again"),
            reason=error.reason,
            status=error.status,
            limits=error.limits,
        )
    if (
        should_retry == "true"
        and not error.retriable
        and error.refuses == "request"
        and not error.resend
    ):
        return GenerationError(
            _said(error, "x-should-retry: true: asked again"),
            reason=error.reason,
            status=error.status,
            retriable=True,
            limits=error.limits,
            answered=True,
        )
    return error


def _said(error: GenerationError, note: str) -> str:
    """The error's message with ``note`` after its status ("OpenAI answered 503 (note): ..."):
    first, since a long message is cut at its end."""
    text = str(error)
    head = f"OpenAI answered {error.status}"
    return f"{head} ({note}){text.removeprefix(head)}" if text.startswith(head) else text


def _answer_error(
    exc: openai.APIStatusError, api_key: str, base_url: str, model: str
) -> GenerationError:
    status = exc.status_code
    code, kind, message = _error_fields(exc.body)
    refusal = _REFUSALS.get(code or "") or _REFUSALS.get(kind or "")
    if refusal is None and missing_model(status, message, model):
        refusal = _REFUSALS["model_not_found"]
    if refusal is None and status == 402:
        # Payment Required: an OpenAI-compatible API's answer for a key whose account cannot
        # pay (OpenRouter's "Insufficient credits", a gateway's budget), as OpenAI's 429
        # insufficient_quota is: the key's, not the request's, and no retry fixes it
        refusal = _REFUSALS["insufficient_quota"]
    if message is None and not exc.response.content:  # a load balancer's 503, a proxy's 429
        message = f"no body ({exc.response.reason_phrase or 'no reason given'})"
    elif message is None and not isinstance(exc.body, Mapping):  # a proxy's or a server's page
        kind_of = exc.response.headers.get("content-type", "").split(";")[0].strip()
        message = f"a body that is not OpenAI's JSON ({kind_of or 'no content type'})"
    message = scrub(message or exc.message, api_key)
    limits = read_limits(exc.response.headers, message, secret=api_key)
    text = f"OpenAI answered {status}"
    if code and code != str(status):  # the upstream's words too: scrubbed as its message is
        text += f" {scrub(code, api_key)}"
    moved = redirected(exc.response, base_url)
    unsent = moved is not None and "authorization" not in exc.response.request.headers
    if moved is not None and (
        (status in (404, 405) and refusal is None) or (status in (401, 403) and unsent)
    ):
        # the base URL redirects (the SDK's client follows): a 301 or 302 of this POST is
        # followed as a GET, without the body (a 404 or 405), and one to another origin
        # without the key (OpenAI's 401 "You didn't provide an API key"): the base URL's
        # answer, not the customer's key's, which it refused
        text += f" ({scrub(moved, api_key)})"
        return GenerationError(
            f"{text}: {message}", reason="BadRequest", status=status, limits=limits
        )
    if status in (404, 405) and refusal is None and "model" not in message.lower():
        # no such path: the base URL, not the request (a 404 that says "model", as a
        # compatible API's for a model it does not serve says it in words of its own: no hint)
        text += f" ({where_to_look(base_url)})"  # (first: a long message is cut at its end)
    elif status in (401, 403) and not isinstance(exc.body, Mapping):
        # not OpenAI's refusal of the key (its JSON): a page (a firewall's, a proxy's, a
        # WAF's "Attention Required") refuses the call before it reaches OpenAI
        text += (
            " (a page, not OpenAI's JSON: a proxy or a firewall before OpenAI refuses the call,"
            " or OpenAI the key; check what stands between, then the key)"
        )
    if status == 400 and code == "content_filter":
        # Azure OpenAI's refusal of the prompt by its content filter, in place of a completion
        # (a 200 ``finish_reason: content_filter`` is its filter's cut of the text): the same
        # prompt is refused again, by any key with the deployment's filter
        text += f" ({scrub(filtered_prompt(exc.body), api_key)})"
        return GenerationError(
            f"{text}: {message}", reason="ContentFiltered", status=status, limits=limits
        )
    text += f": {message}"
    if status == 429 and refusal is None and _too_large(message):
        return GenerationError(text, reason="RequestTooLarge", status=status, limits=limits)
    if refusal is not None:
        reason, scope = refusal
        return GenerationError(text, reason=reason, status=status, refuses=scope, limits=limits)
    # OpenAI's SDK retries 408 and 409 itself (we turned its retries off): they wait here
    return status_error(GenerationError, status, text, limits, outage=(408, 409))


def filtered_prompt(body: object) -> str:
    """What Azure OpenAI's content filter says it flagged in a prompt it refused: 400
    ``{"error": {"code": "content_filter", "param": "prompt", "innererror": {"code":
    "ResponsibleAIPolicyViolation", "content_filter_result": {"hate": {"filtered": true,
    "severity": "high"}, ...}}}}`` (its Responses API's ``content_filters``: ``[{"blocked":
    true, "content_filter_results": {...}}]``). The categories and their severities only: its
    own names, never the prompt's words."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    results: list[object] = []
    if isinstance(body, Mapping):
        inner = body.get("innererror")
        if isinstance(inner, Mapping):
            results.append(inner.get("content_filter_result"))
        listed = body.get("content_filters")
        if isinstance(listed, list):
            results += [f.get("content_filter_results") for f in listed if isinstance(f, Mapping)]
    flagged: list[str] = []
    for result in results:
        if not isinstance(result, Mapping):
            continue
        for category, verdict in result.items():
            if not isinstance(verdict, Mapping) or verdict.get("filtered") is not True:
                continue
            severity = verdict.get("severity")
            said = str(category) + (f" {severity}" if isinstance(severity, str) else "")
            if said not in flagged:
                flagged.append(said)
    what = f": {', '.join(flagged)}" if flagged else ""
    return (
        f"Azure OpenAI's content filter refused the prompt{what}; no text was generated, and"
        " the same prompt is refused again: change it, or the deployment's content filter"
    )


def connection_failure(exc: openai.APIConnectionError) -> str | None:
    """What failed of a call that got no answer, by its errors' names (``ClientConnectorError
    (ConnectionRefusedError)``, ``ServerDisconnectedError``); None if it timed out.

    Not the SDK's word for it: its aiohttp transport maps every ``aiohttp.ClientConnectionError``
    to httpx's ``ConnectTimeout`` (its table's most general entry wins), raised as
    ``APITimeoutError``, so a port nobody listens on, a name that does not resolve, a
    connection the server closed without answering (a kept-alive one it dropped) all read
    "timed out", and were counted as the timeouts of a slow generation (three of them, the key
    answering other calls, end a request as too slow: "raise OPENAI_TIMEOUT_SECONDS")."""
    chain: list[BaseException] = []
    error: BaseException | None = exc.__cause__
    while error is not None and len(chain) < 8:
        chain.append(error)
        error = error.__cause__
    if any(isinstance(found, TimeoutError) for found in chain):  # (aiohttp's timeouts are)
        return None
    for error in chain:
        if isinstance(error, aiohttp.ClientConnectionError | OSError):
            return failure_name(error)
    if isinstance(exc, openai.APITimeoutError):
        return None
    return type(chain[0] if chain else exc).__name__


def certificate_failure(error: BaseException) -> str | None:
    """Why the upstream's TLS certificate did not verify, if that is what failed (None: it is
    not): OpenSSL's words for it (``self-signed certificate``, ``certificate has expired``,
    ``Hostname mismatch, certificate is not valid for 'api.example.com'.``). Found under the
    SDK's ``APITimeoutError`` (its aiohttp transport's ``ConnectTimeout``) and aiohttp's
    ``ClientConnectorCertificateError`` alike, by walking the causes."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, aiohttp.ClientConnectorCertificateError):
            seen = seen.certificate_error
            continue
        if isinstance(seen, ssl.SSLCertVerificationError):
            said = seen.verify_message or seen.reason or "certificate verify failed"
            return str(said).rstrip(".")
        seen = seen.__cause__
    return None


def certificate_error(
    error: type[E], upstream: str, why: str, base_url: str, setting: str, api_key: str
) -> E:
    """A certificate that does not verify, as the final failure it is: verified again, it fails
    again, so nothing waits for it (it was ``Unreachable``, waited on until the maximum wait).
    Names the upstream, what OpenSSL said, the base URL (without credentials or query) and
    what to do; never the key."""
    return error(
        f"{upstream}'s TLS certificate at {base_url} does not verify: {scrub(why, api_key)}; no"
        f" retry fixes it (behind a proxy or a private CA, give its CA certificate in"
        f" SSL_CERT_FILE; else check TALKSTREAM_{setting}_BASE_URL)",
        reason=CERTIFICATE_ERROR,
    )


def failure_name(error: BaseException) -> str:
    """A connection error by its class and the OS-level error under it, if any:
    ``ClientConnectorError (ConnectionRefusedError)``, ``ServerDisconnectedError``. Names
    only: an error's text may hold a URL, and a URL its credentials."""
    cause = error.__cause__
    return type(error).__name__ + (f" ({type(cause).__name__})" if cause else "")


def refuses_max_tokens(exc: openai.APIStatusError) -> bool:
    """Whether the answer is OpenAI's refusal of ``max_tokens`` for the model, and that only:
    400 ``{"error": {"code": "unsupported_parameter", "param": "max_tokens", "message":
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead."}}`` (Azure OpenAI's is the same)."""
    body: object = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if exc.status_code != 400 or not isinstance(body, Mapping):
        return False
    return body.get("code") == "unsupported_parameter" and body.get("param") == "max_tokens"


def missing_model(status: int, message: str | None, model: str) -> bool:
    """Whether an error answer without OpenAI's code is an OpenAI-compatible API's for the
    model asked for, which it does not serve (``_MISSING_MODEL``): the model refused a while,
    as OpenAI's ``model_not_found`` refuses it. Only the answers known to mean it, naming that
    model: any other 404 (a path the API does not have) or 400 stays about the request, any
    other 500 an outage."""
    shapes = _MISSING_MODEL.get(status)
    if shapes is None or not message or not model:
        return False
    return re.search(shapes.format(m=re.escape(model)), message) is not None


def shown_url(url: str) -> str:
    """``url`` as a message may show it: its credentials (``user:password@``), query and
    fragment (a proxy's token may ride in any) each replaced by ``***``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    with contextlib.suppress(ValueError):  # (a port that is not one: left out)
        host += f":{parts.port}" if parts.port is not None else ""
    if parts.username is not None or parts.password is not None:
        host = f"***@{host}"
    hidden = ["***" if part else "" for part in (parts.query, parts.fragment)]
    return urlunsplit((parts.scheme, host, parts.path, *hidden))


def redirected(response: httpx2.Response, base_url: str) -> str | None:
    """Where Chat Completions was redirected to, and what to do, if it was (None: not);
    shown without credentials or query."""
    if not response.history:
        return None
    try:
        moved = shown_url(str(response.request.url))
    except RuntimeError:  # (no request: not an answer the client made)
        return None
    return (
        f"redirected to {moved}: set TALKSTREAM_OPENAI_BASE_URL ({base_url}) to where it points,"
        " without /chat/completions"
    )


def where_to_look(base_url: str) -> str:
    """What an operator checks when the API answers 404 to Chat Completions itself: the base
    URL, which for OpenAI ends in ``/v1`` (``https://api.openai.com/v1``)."""
    if base_url.rstrip("/").endswith("/v1"):
        return f"no Chat Completions at TALKSTREAM_OPENAI_BASE_URL {base_url}: is it OpenAI's API?"
    return (
        f"no Chat Completions at TALKSTREAM_OPENAI_BASE_URL {base_url}: OpenAI's API ends in"
        " /v1, e.g. https://api.openai.com/v1"
    )


def _too_large(message: str) -> bool:
    """A 429 no wait fixes: the call asks for more than the key's limit a minute."""
    asked = _ASKED.search(message)
    return asked is not None and int(asked[2]) > int(asked[1])


def _error_fields(body: object) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) of OpenAI's ``{"error": {...}}`` envelope (the SDK may hand the
    envelope or its inside)."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        body = body["error"]
    if not isinstance(body, Mapping):
        return None, None, None
    fields: list[Any] = [body.get("code"), body.get("type"), body.get("message")]
    return tuple(str(f) if f is not None else None for f in fields)  # type: ignore[return-value]


def scrub(message: str, secret: str) -> str:
    """Drop the key, as it is and as a URL or a form carries it, and anything that looks like
    a key from an upstream message."""
    if secret:
        message = encoded_forms(secret).sub("[redacted]", message)
    return well_formed(_KEYLIKE.sub("[redacted]", message)[:300])


@functools.lru_cache(maxsize=KEYED_CLIENTS)
def encoded_forms(secret: str) -> re.Pattern[str]:
    """``secret`` as it is and as an upstream may quote it back: percent-encoded (a URL's path
    or query: ``sk-a/b`` as ``sk-a%2Fb``, in either case of hex, each character encoded or not,
    as ``quote`` and ``quote_plus`` leave some alone) or form-encoded (a space as ``+``). A key
    with ``/``, ``+``, ``=``, ``&`` or a space in it, echoed in a query (a Talkable
    ``api_key=...``, a proxy's URL), was kept whole in a reason and a log. Kept for the keys
    in use (as :class:`ChatClient` keeps their clients): made anew, the pattern cost a 429's
    answer eight times what the rest of its scrubbing does."""
    return re.compile("".join(_either(char) for char in secret))


def _either(char: str) -> str:
    """One character of a secret: itself, its UTF-8 bytes percent-encoded, ``+`` for a space."""
    forms = [re.escape(char), "".join(_percent(byte) for byte in char.encode())]
    if char == " ":
        forms.append(r"\+")
    return f"(?:{'|'.join(forms)})"


def _percent(byte: int) -> str:
    """``%2F`` or ``%2f``: a byte percent-encoded, its hex in either case."""
    return "%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")
