"""Every value that travels on a topic: facts (past tense) and commands (imperative).

Which topic carries which of them, keyed how, is the catalogue in ``streams/topics.py``.
[requests] holds the ledger's input: webhooks (:class:`RequestReceived`), what the executors
report of each attempt (``*AttemptSucceeded`` / ``*AttemptFailed``), the deadline timer's
:class:`DeadlineExpired` and an operator's :class:`RedriveRequested`. The commands
(:class:`GenerateText`, :class:`PublishCompletion`) carry sealed keys; the lifecycle events
(:class:`LifecycleEvent`, the analytics contract) never do.

Secrets are :class:`Sealed` strings: ciphertext made by ``streams.secrets``; the domain moves
them around but never opens them. Times are epoch milliseconds (``*_ms``) or, for the usage
window, epoch seconds, as Talkable renders them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.lifecycle import EventType, State
from models.params import COMPLETION_EVENT_CATEGORY, UsageLimit

# 1: the first contract. 2: RedriveRequested on [requests]; the OpenAI key's fingerprint on
# RequestReceived and GenerateText (its target); waited_ms on attempt results and lifecycle
# events (time in the target's queue); arrived_at_ms on RequestReceived events (the wall clock
# of the ingress, beside the event time). 3: GapProbe on [requests]. 4: on a DeadLetter of
# work the ledger gave up on, the [requests] record it was deciding (decided_topic,
# decided_partition, decided_offset); on RedriveRequested, the stage and attempt it runs
# again. 5: ``truncated`` on GenerationAttemptSucceeded and on TextGenerated lifecycle events
# (OpenAI cut the text at the completion's cap: finish_reason length). 6: on
# PublishCompletion, ``other_event_number`` (the number its text goes under when Talkable holds
# another request's event under the request's own), and on PublicationAttemptSucceeded the
# ``event_number`` it landed under when it was that one. 7: ``waited_out`` on attempt failures
# (the attempt ended waiting for its target, QueueTimeout: the upstream did not refuse it; the
# lifecycle event's cause then says so). 8: on PublicationAttemptSucceeded,
# ``landed_event_number`` (the number Talkable holds its event under, whichever it was), and on
# CompletionPublished lifecycle events, that ``event_number`` (what joins a request with
# Talkable's event). 9: on PublicationStarted and PublicationFailed lifecycle events,
# ``attempted_event_number`` (the number the attempt writes the event under: what joins a
# failed publication with the Talkable event it attempted). 10: ``not_called`` on attempt
# failures (the attempt failed before its call was made: the webhook's key could not be opened;
# the lifecycle event's cause then says so). 11: no field added; ``person`` (the key of
# [requests], the ledger's table and every value's ``person``) folds the site's case
# (``models.params.person_key``: ``Shop:ada@x.io`` is ``shop:ada@x.io``, one usage window
# for the site in any case); a record written before carries the key as its site was typed,
# which the ledger and a replay read as recorded. ``spec.site`` and ``site`` stay as the
# webhook typed them (what Talkable is called with). 12: no field added; a re-issued
# generation's GenerationStarted says its ``model`` (the one asked for, as a first attempt's and
# a redrive's do: it said none), and a failed generation's ``latency_ms`` (on
# GenerationAttemptFailed and its GenerationFailed lifecycle event) is its last call's time,
# where it was 0 (not measured); 0 still when it made no call. 13: ``latency_ms`` on
# PublicationAttemptSucceeded and PublicationAttemptFailed (the Talkable call's time: the last
# call's, 0 when it made none) and on their CompletionPublished and PublicationFailed
# lifecycle events; a result written before says 0 (not measured). Fields are only ever
# added, optional.
SCHEMA_VERSION = 13

# a field a lifecycle event of a type says from a schema version on, though the ledger could
# have derived it before: a recorded event an earlier version wrote does not say it, and
# ``replay --verify`` does not hold it to what this version derives there
SAID_FROM: dict[tuple[str, str], int] = {
    ("PublicationStarted", "attempted_event_number"): 9,
    ("PublicationFailed", "attempted_event_number"): 9,
    ("GenerationStarted", "model"): 12,  # a re-issue's (a first attempt's said it before)
    ("CompletionPublished", "latency_ms"): 13,
    ("PublicationFailed", "latency_ms"): 13,
}

Sealed = Annotated[str, Field(min_length=1, description="Fernet token; never the plaintext")]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = Field(
        SCHEMA_VERSION,
        description="the version of the contract the value was written at; readers ignore "
        "fields they do not know and do not refuse a higher version",
    )


class ChatRequest(BaseModel):
    """What is sent to Chat Completions, less the key."""

    model_config = ConfigDict(frozen=True)

    model: str
    messages: list[dict[str, str]]
    # the completion's token cap: sent as ``max_tokens`` (as ``max_completion_tokens`` to a
    # model that refuses ``max_tokens``: OpenAI's reasoning models), unless ``extra`` carries
    # ``max_completion_tokens`` (then the cap is that, and ``max_tokens`` is not sent)
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

PERSON_KEY = (
    "the person: site:email, the site lower-cased from schema 11 (one person for the site in"
    " any case), as the site was typed before; the key of [requests] and the ledger's table"
)


class RequestReceived(_Wire):
    kind: Literal["request_received"] = "request_received"
    request_id: str
    delivery_id: str
    person: str = Field(description=PERSON_KEY)
    at_ms: int = Field(ge=0, description="ingress receive time")
    spec: RequestSpec
    secrets: SealedSecrets
    openai_key_id: str = Field(
        "", description="a fingerprint of the OpenAI key (never the key): the target it paces"
    )
    talkable_key_id: str = Field(
        "", description="a fingerprint of the Talkable key (never the key): what its refusal covers"
    )


class GenerationAttemptSucceeded(_Wire):
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
    waited_ms: int = Field(0, ge=0, description="time in its target's queue")
    truncated: bool = Field(
        False, description="OpenAI cut the text at the completion's cap (finish_reason length)"
    )


class GenerationAttemptFailed(_Wire):
    kind: Literal["generation_failed"] = "generation_failed"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    error_class: str
    error_message: str
    retriable: bool = False
    latency_ms: int = Field(
        0,
        description="its last call's time (schema 12; 0 before, not measured), 0 when it made "
        "none (not_called, or a wait that ended before any call)",
    )
    tries: int = 1
    waited_ms: int = Field(0, ge=0, description="time in its target's queue")
    waited_out: bool = Field(
        False,
        description="it ended waiting for its target (QueueTimeout: longer than the maximum "
        "wait, or asked to wait longer): the upstream did not refuse it",
    )
    not_called: bool = Field(
        False,
        description="it failed before its call was made (the webhook's key could not be "
        "opened: SealedKey; from a later version, also a refusal of its key, model or site "
        "remembered, or a RequestTooLarge decided without a call): the upstream was not "
        "called (schema 10)",
    )


class PublicationAttemptSucceeded(_Wire):
    kind: Literal["publication_succeeded"] = "publication_succeeded"
    request_id: str
    person: str
    site: str = ""
    redrive: bool = Field(False, description="the result of an operator's redrive")
    attempt: int = Field(ge=1)
    at_ms: int = Field(ge=0)
    duplicate: bool = False
    tries: int = 1
    waited_ms: int = Field(0, ge=0, description="time in its target's queue")
    latency_ms: int = Field(
        0, ge=0, description="its Talkable call's time (schema 13; 0 before, not measured)"
    )
    event_number: str | None = Field(
        None, description="the number it landed under, when not the command's (other_event_number)"
    )
    landed_event_number: str | None = Field(
        None,
        description="the number Talkable holds its event under: the command's event_number, or "
        "its other_event_number (schema 8; absent: written before)",
    )


class PublicationAttemptFailed(_Wire):
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
    waited_ms: int = Field(0, ge=0, description="time in its target's queue")
    latency_ms: int = Field(
        0,
        ge=0,
        description="its last Talkable call's time (schema 13; 0 before, not measured), 0 when "
        "it made none (not_called, or a wait that ended before any call)",
    )
    waited_out: bool = Field(
        False,
        description="it ended waiting for its target (QueueTimeout: longer than the maximum "
        "wait, or asked to wait longer): the upstream did not refuse it",
    )
    not_called: bool = Field(
        False,
        description="it failed before its call was made (the webhook's key could not be "
        "opened: SealedKey; from a later version, also a refusal of its key, model or site "
        "remembered, or a RequestTooLarge decided without a call): the upstream was not "
        "called (schema 10)",
    )


class DeadlineExpired(_Wire):
    """The deadline timer found an attempt overdue (it only reads the table; this message lets
    the ledger act on it in stream context, and is ignored if the attempt is stale)."""

    kind: Literal["deadline_expired"] = "deadline_expired"
    request_id: str
    person: str
    attempt: int = Field(ge=1)
    stage: Literal["generating", "publishing"]
    at_ms: int = Field(ge=0)
    lost: bool = Field(
        False,
        description="not late but lost: the executor that took the attempt restarted before "
        "it reported (sent by its next run, at once, instead of waiting out the deadline)",
    )


class RedriveRequested(_Wire):
    """An operator asked (``talkstream redrive``) to run a parked request again, its cause
    fixed; the ledger decides whether it still can."""

    kind: Literal["redrive_requested"] = "redrive_requested"
    request_id: str
    person: str
    at_ms: int = Field(ge=0, description="when the operator asked")
    reason: str = Field("", description="why it was given up on (the dead letter's reason)")
    stage: Literal["generating", "publishing"] | None = Field(
        None,
        description="the stage it was parked in (its dead letter's command: a generation, a "
        "publication); with attempt, what this redrive runs again",
    )
    attempt: int | None = Field(
        None,
        ge=1,
        description="the attempt it was parked at (its dead letter's): a redrive of any other "
        "stage or attempt is stale (the request was redriven since) and changes nothing; "
        "absent: written by an earlier version, which redrove whatever was parked",
    )


class GapProbe(_Wire):
    """A worker's ledger took nothing from a partition for a while though faust took offsets of
    it from Kafka (``taken``) that the ledger never received (``expected`` is the next it
    awaits): faust dropped them, as a rebalance can. The ledger reads a skipped range back when
    the partition's next message arrives; on a quiet partition that could be hours, so the
    worker sends this to the partition itself. It decides nothing and concerns no request: its
    arrival makes the ledger repair the gap before it, or, if the offsets were only waiting in
    faust's buffers, it follows them and finds none."""

    kind: Literal["gap_probe"] = "gap_probe"
    partition: int = Field(ge=0, description="the [requests] partition it was sent to")
    expected: int = Field(ge=0, description="the next offset the ledger awaited")
    taken: int = Field(ge=0, description="the last offset faust had taken from Kafka")
    at_ms: int = Field(ge=0)


# what the ledger's rules decide on (every message of [requests] but a GapProbe)
Decidable = (
    RequestReceived
    | GenerationAttemptSucceeded
    | GenerationAttemptFailed
    | PublicationAttemptSucceeded
    | PublicationAttemptFailed
    | DeadlineExpired
    | RedriveRequested
)
RequestsValue = Annotated[Decidable | GapProbe, Field(discriminator="kind")]


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
    openai_key_id: str = Field("", description="the key's fingerprint: its target")
    redrive: bool = Field(False, description="re-issued by `talkstream redrive`")


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
    talkable_key_id: str = Field("", description="the key's fingerprint: what a refusal covers")
    redrive: bool = Field(False, description="re-issued by `talkstream redrive`")
    other_event_number: str | None = Field(
        None,
        description=(
            "the number to write under when Talkable holds another request's event under"
            " event_number, the request's own default (the same params earlier, forgotten by"
            " the ledger); None: a number the campaign gave, or no other"
        ),
    )


# --- [lifecycle] ----------------------------------------------------------------------------


class LifecycleEvent(_Wire):
    """One state transition; past-tense ``type``, no secrets. The analytics contract."""

    type: EventType = Field(
        description="the transition, in the past tense (RequestReceived, ..., PublicationFailed)"
    )
    request_id: str = Field(
        description="the id the ingress answered (a fingerprint of the webhook's params), or "
        "<request_id>~<delivery> for a repeat of the same params (duplicate_of names the "
        "fingerprint); with person, who"
    )
    person: str = Field(description=PERSON_KEY)
    site: str = Field(description="the site as the webhook typed it (what Talkable is called with)")
    state: State = Field(description="the state the request reached (topology.md, State machine)")
    previous_state: State | None = Field(
        description="the state it left; null on a request's first transition (RequestReceived)"
    )
    at_ms: int = Field(
        ge=0,
        description="the event time the decision used, epoch ms: Talkable's "
        "usage_limit.current_time when the webhook carried one, else its arrival; for results, "
        "when the executor finished; for a re-issue, when the deadline timer fired or the "
        "failed attempt ended; for a redrive, when the operator asked. It need not grow along "
        "a request's transitions: read them in the topic's order",
    )
    cause: str = Field(
        description="why, in words: a re-issue says the failed attempt "
        "('attempt 1 failed (RateLimitError); re-issued'), a failure made without a call "
        "'OpenAI (Talkable) not called: ...'"
    )
    attempt: int = Field(
        0,
        description="which attempt of a step (re-issues and redrives count up, from 1); 0 for "
        "the webhook's RequestReceived and its judgement",
    )
    duplicate_of: str | None = Field(
        None,
        description="on a rejected duplicate (its DuplicateRejected and RequestReceived): the "
        "original request's fingerprint",
    )
    model: str | None = Field(
        None,
        description="on TextGenerated: the model OpenAI answered with (e.g. a dated "
        "gpt-4o-mini-2024-07-18); on GenerationStarted: the model the webhook asked for (a "
        "re-issue's from schema 12 on)",
    )
    prompt_tokens: int | None = Field(
        None, description="on TextGenerated: the prompt's tokens, as OpenAI counted them"
    )
    completion_tokens: int | None = Field(
        None, description="on TextGenerated: the text's tokens, as OpenAI counted them"
    )
    latency_ms: int | None = Field(
        None,
        description="on TextGenerated: the OpenAI call's time; on GenerationFailed: the "
        "attempt's last call's time (schema 12; 0 before, not measured), 0 when it made no "
        "call, null when no call's result came (DeadlineExpired, AttemptLost); on "
        "CompletionPublished and PublicationFailed, the same of its Talkable call (schema 13; "
        "null before, or 0 where its result was written before)",
    )
    error_class: str | None = Field(
        None,
        description="on GenerationFailed and PublicationFailed (the step given up on): why, as "
        "README's terminal states table names it; an attempt re-issued carries none",
    )
    error_message: str | None = Field(
        None,
        description="on GenerationFailed and PublicationFailed: what the upstream (or the "
        "executor) said, no secret in it",
    )
    window_start: int | None = Field(
        None,
        description="the usage window the decision saw: its start in epoch seconds (Talkable's "
        "usage_limit.start_time, or the current_time a new window started at), not ms",
    )
    window_count: int | None = Field(
        None,
        description="the requests counted in that window after the decision (admitted: this "
        "one included; limited: the count that filled it; a released slot: after its release)",
    )
    waited_ms: int | None = Field(
        None, description="how long the attempt waited in its upstream target's queue"
    )
    arrived_at_ms: int | None = Field(
        None,
        description="on RequestReceived: when the webhook reached the ingress (wall clock); "
        "at_ms is the event time it was judged at",
    )
    truncated: bool | None = Field(
        None,
        description="on TextGenerated: true when OpenAI cut the text at the campaign's "
        "token cap (max_tokens, sent as max_completion_tokens to a reasoning model, or the "
        "campaign's max_completion_tokens; finish_reason length); it is published as it is. "
        "Absent otherwise, and on events written before schema 5",
    )
    event_number: str | None = Field(
        None,
        description="on CompletionPublished: the number Talkable holds the text's event under "
        "(the campaign's own event_number, else generate_text_complete-<request_id>, or "
        "generate_text_complete-<request_id>~<delivery> when Talkable held another request's "
        "event under that); with site, what joins the request with Talkable's event. Absent "
        "otherwise, and when the publisher's result was written before schema 8",
    )
    attempted_event_number: str | None = Field(
        None,
        description="on PublicationStarted and PublicationFailed: the number the attempt "
        "writes the text's event under (the campaign's own event_number, else "
        "generate_text_complete-<request_id>); with site, what joins a publication, failed "
        "ones too, with the Talkable event it attempted. Absent otherwise, and on events "
        "written before schema 9",
    )

    def identity(self) -> tuple[str, str, str, int]:
        """What makes two records the same transition: the ledger may emit one twice (it
        re-processes a message after a crash); the projection and replay count it once."""
        return (self.request_id, self.type, str(self.state), self.attempt)


# --- [deadletter] ---------------------------------------------------------------------------


class DeadLetter(_Wire):
    """A message that cannot be used, or work the ledger gave up on, with where it came from
    and why. A message's ``topic``, ``partition`` and ``offset`` are where it was read. Work
    given up on is a command that was never read from a record: ``topic`` is the one it was
    for ([generate], [completions]), ``partition`` and ``offset`` are -1, and ``decided_*``
    name the [requests] record the ledger was deciding when it gave up (a failed attempt's
    result, an expired deadline)."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None = None
    value_b64: str | None = Field(None, description="the original value, base64")
    request_id: str | None = None
    at_ms: int = 0
    decided_topic: str | None = Field(
        None,
        description="work the ledger gave up on: the topic of the record whose decision gave "
        "it up ([requests])",
    )
    decided_partition: int | None = Field(None, description="that record's partition")
    decided_offset: int | None = Field(None, description="that record's offset")

    @property
    def decided(self) -> str | None:
        """The record the ledger was deciding, as operators read it: topic/partition/offset."""
        if self.decided_topic is None:
            return None
        return f"{self.decided_topic}/{self.decided_partition}/{self.decided_offset}"
