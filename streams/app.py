"""The composition root: settings, clients, stores and the faust app, built in one place.

Tests hand in stand-ins through the keyword arguments of :func:`build`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust

from models.events import DeadLetter
from models.ledger import Policy
from streams.clients.openai_chat import ChatClient
from streams.clients.retry import RetryPolicy
from streams.clients.talkable import TalkableClient
from streams.codecs import encode
from streams.errors import DecodeError
from streams.kafka_options import faust_credentials
from streams.observability import WorkerMetrics, serve_worker_http
from streams.projection.store import ProjectionStore
from streams.secrets import SecretBox, load_secret_box
from streams.settings import Settings
from streams.topics import LEDGER_TABLE

log = logging.getLogger(__name__)
T = TypeVar("T")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass
class Topics:
    requests: Any
    generate: Any
    completions: Any
    lifecycle: Any
    deadletter: Any


@dataclass
class Runtime:
    settings: Settings
    app: faust.App
    topics: Topics
    ledger_table: Any
    secrets: SecretBox
    chat: ChatClient
    talkable: TalkableClient
    projection: ProjectionStore
    policy: Policy
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)

    async def decoded(
        self,
        decoder: Callable[[bytes | None], T],
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> T | None:
        """The decoded value, or None once a value that does not decode is dead-lettered."""
        try:
            return decoder(value)
        except DecodeError as exc:
            await self.dead_letter(
                topic=topic,
                partition=partition,
                offset=offset,
                reason=str(exc),
                key=key,
                value=value,
            )
            return None

    async def dead_letter(
        self,
        *,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        key: bytes | None = None,
        value: bytes | None = None,
        request_id: str | None = None,
    ) -> None:
        letter = DeadLetter(
            topic=topic,
            partition=partition,
            offset=offset,
            reason=reason,
            key=key.decode("utf-8", "replace") if key is not None else None,
            value_b64=base64.b64encode(value).decode("ascii") if value is not None else None,
            request_id=request_id,
            at_ms=now_ms(),
        )
        self.metrics.dead_letters.labels(topic=topic).inc()
        log.warning(
            "dead-lettered topic=%s partition=%s offset=%s request_id=%s reason=%s",
            topic,
            partition,
            offset,
            request_id,
            reason,
        )
        await self.topics.deadletter.send(key=key, value=encode(letter))


def now_ms() -> int:
    return int(time.time() * 1000)


def policy_from(settings: Settings) -> Policy:
    return Policy(
        dedupe_window_ms=settings.dedupe_window_seconds * 1000,
        generation_deadline_ms=int(settings.generation_deadline_seconds * 1000),
        publish_deadline_ms=int(settings.publish_deadline_seconds * 1000),
        max_attempts=settings.max_attempts,
    )


def faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def build(
    settings: Settings,
    *,
    chat: ChatClient | None = None,
    talkable: TalkableClient | None = None,
    projection: ProjectionStore | None = None,
    secrets: SecretBox | None = None,
) -> Runtime:
    (settings.data_dir / "worker" / settings.worker_name).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker(settings.kafka_bootstrap),
        store=settings.table_store,
        datadir=str(settings.data_dir / "worker" / settings.worker_name),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=settings.producer_linger_ms,
        web_enabled=False,
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=max(settings.session_timeout_seconds / 10, 0.5),
        autodiscover=False,
    )
    t = settings.topic
    topics = Topics(
        requests=app.topic(t("requests"), partitions=settings.partitions, **RAW),
        generate=app.topic(t("generate"), partitions=settings.partitions, **RAW),
        completions=app.topic(t("completions"), partitions=settings.partitions, **RAW),
        lifecycle=app.topic(t("lifecycle"), partitions=settings.partitions, **RAW),
        deadletter=app.topic(t("deadletter"), partitions=settings.partitions, **RAW),
    )
    table = app.Table(
        LEDGER_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,  # bytes: faust stores them raw (our codec does the JSON)
        value_type=bytes,
    )
    runtime = Runtime(
        settings=settings,
        app=app,
        topics=topics,
        ledger_table=table,
        secrets=secrets or load_secret_box(settings),
        chat=chat
        or ChatClient(
            settings.openai_base_url,
            settings.openai_timeout_seconds,
            RetryPolicy(
                max_attempts=settings.openai_max_attempts,
                total_deadline=settings.openai_total_deadline_seconds,
                base=settings.retry_base_seconds,
                cap=settings.retry_max_seconds,
            ),
        ),
        talkable=talkable
        or TalkableClient(
            settings.talkable_base_url,
            settings.talkable_timeout_seconds,
            RetryPolicy(
                max_attempts=settings.talkable_max_attempts,
                total_deadline=settings.talkable_total_deadline_seconds,
                base=settings.retry_base_seconds,
                cap=settings.retry_max_seconds,
            ),
        ),
        projection=projection or ProjectionStore.from_url(settings.resolved_database_url),
        policy=policy_from(settings),
    )
    from streams.agents import executors, ledger, projector

    ledger.register(runtime)
    executors.register(runtime)
    projector.register(runtime)

    @app.task
    async def worker_http() -> None:
        try:
            await serve_worker_http(
                app, runtime.metrics, settings.worker_http_host, settings.worker_http_port
            )
        except OSError as exc:  # e.g. a second worker on this host: keep working, unobserved
            log.error(
                "worker http not started on %s:%s (%s); set TALKSTREAM_WORKER_HTTP_PORT",
                settings.worker_http_host,
                settings.worker_http_port,
                exc,
            )

    return runtime
