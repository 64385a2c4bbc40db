"""The error tree. Retryability is data, not a type test at the call site.

    TalkstreamError (retriable = False)
     ├── ConfigError                 settings that cannot work
     │    └── KafkaAuthError         the brokers refuse our SASL credentials or TLS
     ├── DecodeError                 a topic value that is not ours (dead-lettered)
     ├── SecretError                 a sealed secret that no configured key opens
     ├── UpstreamError               an outside service failed; what it means is data:
     │    │                          reason (the error class reported), status, retriable,
     │    │                          throttle (a 429 asking to wait), refuses (what no retry
     │    │                          fixes covers: the request, the whole key, one model),
     │    │                          limits (what the answer said about the target's limits)
     │    ├── GenerationError        OpenAI Chat Completions
     │    ├── PublishError           Talkable API v2
     │    └── QueueTimeout           waited longer than the maximum wait for its target
     └── BrokerUnavailable (retriable = True)   Kafka did not acknowledge in time

Third-party errors are wrapped where they are caught, ``raise ... from exc``; messages never
carry a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from streams.upstream.limits import Limits


class TalkstreamError(Exception):
    retriable: ClassVar[bool] = False


class ConfigError(TalkstreamError):
    pass


class KafkaAuthError(ConfigError):
    """Kafka refused our credentials (SASL) or the TLS handshake failed: no retry fixes it."""


class DecodeError(TalkstreamError):
    pass


class SecretError(TalkstreamError):
    pass


class BrokerUnavailable(TalkstreamError):
    retriable = True


class UpstreamError(TalkstreamError):
    """``retriable`` is per instance here: it depends on what the service answered.

    ``retriable`` errors (a 429, an outage) make the command wait in its target's queue;
    the others end the attempt, and ``refuses`` says whether the same answer is certain for
    the target's other calls (a revoked or exhausted key: ``key``; a missing model: ``model``).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "UpstreamError",
        status: int | None = None,
        retriable: bool = False,
        throttle: bool = False,
        refuses: Literal["request", "key", "model"] = "request",
        limits: Limits | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retriable = retriable  # type: ignore[misc]
        self.throttle = throttle
        self.refuses = refuses
        self.limits = limits
        self.tries = 1


class GenerationError(UpstreamError):
    pass


class PublishError(UpstreamError):
    pass


class QueueTimeout(UpstreamError):
    """A command waited in its target's queue longer than the maximum wait."""
