"""Every value that travels on a topic: facts (past tense) and commands (imperative).

Topic            key          values
[requests]       person       RequestReceived, GenerationSucceeded, GenerationFailed,
                              PublicationSucceeded, PublicationFailed, DeadlineExpired
[generate]       request_id   GenerateText            (carries the sealed OpenAI key)
[completions]    request_id   PublishCompletion       (carries the sealed Talkable key)
[lifecycle]      request_id   LifecycleEvent          (no secrets, for analytics)
[deadletter]     as received  DeadLetter

Secrets are :class:`Sealed` strings: ciphertext made by ``streams.secrets``; the domain moves
them around but never opens them. Times are epoch milliseconds (``*_ms``) or, for the usage
window, epoch seconds, as Talkable renders them.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.lifecycle import State
from models.params import UsageLimit

SCHEMA_VERSION = 1
# The completion's event category; never the trigger's (``generate_text``), or Talkable's own
# event webhook would call us again for our own write-back.
COMPLETION_EVENT_CATEGORY: Final = "generate_text_complete"

Sealed = Annotated[str, Field(min_length=1, description="Fernet token; never the plaintext")]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION


class ChatRequest(BaseModel):
    """What is sent to Chat Completions, less the key."""

    model_config = ConfigDict(frozen=True)

    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    extra: dict[str, Any] = Field(default_factory=dict)


class RequestSpec(BaseModel):
    """The parsed webhook, secrets removed (they travel sealed beside it)."""

    model_config = ConfigDict(frozen=True)

    site: str
    email: str
    event_number: str | None = None
    chat: ChatRequest
    usage_limit: UsageLimit | None = None
    trigger_criteria: str | None = None


class SealedSecrets(BaseModel):
    model_config = ConfigDict(frozen=True)

    talkable_api_key: Sealed
    openai_api_key: Sealed


# --- [requests] -----------------------------------------------------------------------------


class RequestReceived(_Wire):
    kind: Literal["request_received"] = "request_received"
    request_id: str
    delivery_id: str
    person: str
    at_ms: int = Field(ge=0, description="ingress receive time")
    spec: RequestSpec
    secrets: SealedSecrets


class GenerationSucceeded(_Wire):
    kind: Literal["generation_succeeded"] = "generation_succeeded"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    tries: int = 1


class GenerationFailed(_Wire):
    kind: Literal["generation_failed"] = "generation_failed"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    error_class: str
    error_message: str
    retriable: bool = False
    latency_ms: int = 0
    tries: int = 1


class PublicationSucceeded(_Wire):
    kind: Literal["publication_succeeded"] = "publication_succeeded"
    request_id: str
    person: str
    site: str = ""
    redrive: bool = Field(False, description="the result of an operator's redrive")
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    duplicate: bool = False
    tries: int = 1


class PublicationFailed(_Wire):
    kind: Literal["publication_failed"] = "publication_failed"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    error_class: str
    error_message: str
    retriable: bool = False
    status: int | None = None
    tries: int = 1


class DeadlineExpired(_Wire):
    kind: Literal["deadline_expired"] = "deadline_expired"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    stage: Literal["generating", "publishing"]
    at_ms: int = Field(ge=0)


RequestsValue = Annotated[
    RequestReceived
    | GenerationSucceeded
    | GenerationFailed
    | PublicationSucceeded
    | PublicationFailed
    | DeadlineExpired,
    Field(discriminator="kind"),
]


# --- commands -------------------------------------------------------------------------------


class GenerateText(_Wire):
    kind: Literal["generate_text"] = "generate_text"
    request_id: str
    person: str
    site: str
    attempt: int = Field(ge=1)
    issued_at_ms: int = Field(ge=0)
    chat: ChatRequest
    openai_api_key: Sealed


class PublishCompletion(_Wire):
    kind: Literal["publish_completion"] = "publish_completion"
    request_id: str
    person: str
    site: str
    email: str
    attempt: int = Field(ge=1)
    issued_at_ms: int = Field(ge=0)
    event_category: Literal["generate_text_complete"] = COMPLETION_EVENT_CATEGORY
    event_number: str
    custom_properties: dict[str, str]
    talkable_api_key: Sealed
    redrive: bool = Field(False, description="re-issued by `talkstream redrive`")


# --- [lifecycle] ----------------------------------------------------------------------------


class LifecycleEvent(_Wire):
    """One state transition; past-tense ``type``, no secrets. The analytics contract."""

    type: Literal[
        "RequestReceived",
        "DuplicateRejected",
        "RequestSkipped",
        "UsageLimited",
        "RequestAdmitted",
        "GenerationStarted",
        "TextGenerated",
        "GenerationFailed",
        "PublicationStarted",
        "CompletionPublished",
        "PublicationFailed",
    ]
    request_id: str
    person: str
    site: str
    state: State
    previous_state: State | None
    at_ms: int = Field(ge=0, description="the event time the decision used")
    cause: str
    attempt: int = 0
    duplicate_of: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    error_class: str | None = None
    error_message: str | None = None
    window_start: int | None = None
    window_count: int | None = None


# --- [deadletter] ---------------------------------------------------------------------------


class DeadLetter(_Wire):
    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None = None
    value_b64: str | None = Field(None, description="the original value, base64")
    request_id: str | None = None
    at_ms: int = 0
