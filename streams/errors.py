"""The error tree. Retryability is data, not a type test at the call site.

    TalkstreamError (retriable = False)
     ├── ConfigError                 settings that cannot work
     │    ├── KafkaAuthError         the brokers refuse our SASL credentials or TLS
     │    └── SchemaRefused          a projection this version will not migrate (a newer
     │                               version's, or tables without a migration history)
     ├── DecodeError                 a topic value that is not ours (dead-lettered)
     ├── SecretError                 a sealed secret that no configured key opens
     ├── UpstreamError               an outside service failed; what it means is data:
     │    │                          reason (the error class reported), status, retriable,
     │    │                          throttle (a 429 asking to wait), refuses (what no retry
     │    │                          fixes covers: the request, the whole key, one model, a
     │    │                          Talkable site), resend (refused as it was sent, sent
     │    │                          again at once in the way the answer asked for),
     │    │                          limits (what the answer said about the target's limits)
     │    ├── GenerationError        OpenAI Chat Completions
     │    ├── PublishError           Talkable API v2
     │    └── QueueTimeout           waited longer than the maximum wait for its target
     ├── BrokerUnavailable (retriable = True)   Kafka did not take the record (``written``:
     │    │                          False, never will be; None, perhaps: its producer failed
     │    │                          after taking it)
     │    └── PartitionsAdded        [requests] and the ledger's changelog have other
     │                               partition counts: nothing is written until an operator
     │                               redeploys (a new TALKSTREAM_APP_ID)
     └── RecordTooLarge              Kafka refuses the record for its size, however often sent

Third-party errors are wrapped where they are caught, ``raise ... from exc``; messages never
carry a secret.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from streams.upstream.limits import Limits


class TalkstreamError(Exception):
    retriable: ClassVar[bool] = False


class ConfigError(TalkstreamError):
    pass


class KafkaAuthError(ConfigError):
    """Kafka refused our credentials (SASL) or the TLS handshake failed: no retry fixes it.
    ``tls``: the handshake failed, where the address may be another listener's (a plain one,
    or another host's certificate): the CLI then names TALKSTREAM_KAFKA_BOOTSTRAP too, as it
    does for a broker out of reach."""

    def __init__(self, message: str, *, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class SchemaRefused(ConfigError):
    """The projection's schema is one this version will not migrate: a newer version migrated
    it past this one's newest revision, or it has tables but no migration history. Only an
    operator fixes it (upgrading talkstream, ``talkstream migrate --to`` with the newer
    version, ``talkstream replay --force``); the message says which, naming the database with
    its password hidden."""


class DecodeError(TalkstreamError):
    pass


class SecretError(TalkstreamError):
    pass


class BrokerUnavailable(TalkstreamError):
    """Kafka did not take a record, or did not say it has. The message is the operator's (the
    log's: it may name the brokers' addresses); ``told`` is what the webhook's sender is told
    of it (the ingress's 503), naming no address. ``written``: False when the record was not
    written, nor ever will be (never handed to the producer, or refused by the broker); None
    when it may have been (the ingress stopped while its producer held it)."""

    retriable = True

    def __init__(
        self, message: str, *, told: str = "Kafka is unavailable", written: bool | None = False
    ) -> None:
        super().__init__(message)
        self.told = told
        self.written = written


class PartitionsAdded(BrokerUnavailable):
    """A record refused because partitions were added to [requests] or to the ledger's
    changelog since they were created: nothing was written, and nothing will be until an
    operator deploys under a new ``TALKSTREAM_APP_ID``; no retry by itself fixes it, though a
    sender may retry (a 503). ``cause``: what differs, and the fix."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"{cause}; nothing was sent", told=cause)
        self.cause = cause


class RecordTooLarge(TalkstreamError):
    """Kafka refused a record for its size (over the topic's ``max.message.bytes`` or the
    producer's ``max_request_size``): sent again, it is refused again. ``size``: the record's
    bytes; ``limit``: what Kafka takes, when known."""

    def __init__(self, message: str, *, size: int, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class UpstreamError(TalkstreamError):
    """``retriable`` is per instance here: it depends on what the service answered.

    ``retriable`` errors (a 429, an outage) make the command wait in its target's queue;
    the others end the attempt, and ``refuses`` says whether the same answer is certain for
    the target's other calls (a revoked or exhausted key: ``key``; a missing model: ``model``;
    a Talkable site that does not exist: ``site``).
    ``answered``: an error from an answer that came (a 200 without a usable text), which says
    the upstream is up and may have billed the call: asked again a few times if
    ``retriable``, not waited on as an outage; reported at once if not (a refusal).
    ``resend``: a refusal of the call as it was sent, which the adapter has learned to send the
    way the answer asks (OpenAI's 400 for ``max_tokens`` to a model that takes
    ``max_completion_tokens`` only): the upstream generated nothing, and the call is made
    again at once, as the same try (once: refused so again, it is the refusal it says).
    ``called``: False for a failure before the call was made (its key could not be opened, a
    refusal of its key, model or site remembered, a request larger than its target's minute):
    the request's lifecycle says the upstream was not called.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "UpstreamError",
        status: int | None = None,
        retriable: bool = False,
        throttle: bool = False,
        refuses: Literal["request", "key", "model", "site"] = "request",
        limits: Limits | None = None,
        answered: bool = False,
        resend: bool = False,
        called: bool = True,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retriable = retriable  # type: ignore[misc]
        self.throttle = throttle
        self.refuses = refuses
        self.limits = limits
        # the upstream answered (a 200), with nothing usable in it: not an outage, and each
        # such call may have been billed
        self.answered = answered
        # refused as it was sent, and the adapter now sends it the way the answer asked for
        self.resend = resend
        self.called = called
        self.tries = 1


class GenerationError(UpstreamError):
    pass


class PublishError(UpstreamError):
    pass


E = TypeVar("E", bound=UpstreamError)


def status_error(
    error: type[E], status: int, text: str, limits: Limits, *, outage: Collection[int] = ()
) -> E:
    """What an HTTP error status means for the call, the same for every upstream: a 429 waits
    (throttled), a 401 or 403 refuses the key, a 5xx (or one of ``outage``) is an outage that
    waits too, anything else refuses this request only."""
    if status == 429:
        return error(
            text, reason="RateLimited", status=status, retriable=True, throttle=True, limits=limits
        )
    if status in (401, 403):
        reason = "Unauthorized" if status == 401 else "Forbidden"
        return error(text, reason=reason, status=status, refuses="key", limits=limits)
    if status >= 500 or status in outage:
        return error(text, reason="ServerError", status=status, retriable=True, limits=limits)
    return error(text, reason="BadRequest", status=status, limits=limits)


class QueueTimeout(UpstreamError):
    """A command waited in its target's queue longer than the maximum wait."""
