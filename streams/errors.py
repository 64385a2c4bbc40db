"""The error tree. Retryability is data, not a type test at the call site.

    TalkstreamError (retriable = False)
     ├── ConfigError                 settings that cannot work
     │    └── KafkaAuthError         the brokers refuse our SASL credentials or TLS
     ├── DecodeError                 a topic value that is not ours (dead-lettered)
     ├── SecretError                 a sealed secret that no configured key opens
     ├── UpstreamError               an outside service failed (fields: status, retriable)
     │    ├── GenerationError        OpenAI Chat Completions
     │    └── PublishError           Talkable API v2
     └── BrokerUnavailable (retriable = True)   Kafka did not acknowledge in time

Third-party errors are wrapped where they are caught, ``raise ... from exc``; messages never
carry a secret.
"""

from __future__ import annotations

from typing import ClassVar


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
    """``retriable`` is per instance here: it depends on the status the service answered."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retriable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable  # type: ignore[misc]
        self.retry_after = retry_after
        self.tries = 1


class GenerationError(UpstreamError):
    pass


class PublishError(UpstreamError):
    pass
