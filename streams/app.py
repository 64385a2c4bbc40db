"""The composition root: settings, clients, stores and the faust app, built in one place.

It imports the agents and hands each the pieces it uses (``streams.runtime``); the agents never
import it. Tests hand in stand-ins through the keyword arguments of :func:`build`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import faust

from models.ledger import Policy
from streams import openfiles
from streams import topics as topics_module
from streams.agents import executors, ledger
from streams.agents.executors import Executor, ExecutorConfig
from streams.agents.work import Generate, Publish, Work
from streams.clients.openai_chat import ChatClient
from streams.clients.talkable import TalkableClient
from streams.faust_transport import KAFKA_STOP_SECONDS, App, Stream, Table, Topic
from streams.kafka_options import faust_credentials, group_options
from streams.observability import WorkerMetrics, serve_or_log
from streams.runtime import Clock, DeadLetters, SystemClock, Topics
from streams.secrets import SecretBox, load_secret_box
from streams.settings import PRODUCER_MAX_REQUEST_SIZE, Settings
from streams.tabledir import table_dir
from streams.topics import BY_NAME, LEDGER_TABLE
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Scheduler

log = logging.getLogger(__name__)

# a worker whose projector is a process of its own (the default) imports none of it: :func:`build`
# does where the projector runs in the worker (Alembic and the projection's tables, a few tenths
# of a second of CPU at every start)
if TYPE_CHECKING:
    from streams.agents.projector import Projector
    from streams.projection.store import ProjectionStore

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@dataclass(frozen=True)
class Worker:
    """What :func:`build` made: the faust app (with its agents) and what tests look at."""

    app: faust.App
    topics: Topics
    metrics: WorkerMetrics
    executors: list[Executor]
    projector: Projector | None  # None: it runs in a process of its own


class ExecutorParts(NamedTuple):
    config: ExecutorConfig
    scheduler: Scheduler
    work: Work[Any]


def policy_from(settings: Settings) -> Policy:
    return Policy(
        dedupe_window_ms=settings.dedupe_window_seconds * 1000,
        generation_deadline_ms=int(settings.generation_deadline_seconds * 1000),
        publish_deadline_ms=int(settings.publish_deadline_seconds * 1000),
        max_attempts=settings.max_attempts,
        max_wait_ms=int(settings.max_wait_seconds * 1000),
        max_entry_bytes=settings.max_entry_bytes,
    )


def faust_broker(bootstrap: str) -> str:
    """faust's broker URL: our transport (streams/faust_transport.py: an idempotent producer)."""
    return ";".join(f"talkstream://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def _faust_app(settings: Settings) -> faust.App:
    datadir = table_dir(settings)
    datadir.mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=faust_broker(settings.kafka_bootstrap),
        store=settings.table_store,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        # faust's leader election (a topic of its own) serves ``on_leader`` timers; we have
        # none, and without the topic faust logs an error at every start
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # what TALKSTREAM_MAX_ENTRY_BYTES is validated against (a ledger entry is one record)
        producer_max_request_size=PRODUCER_MAX_REQUEST_SIZE,
        producer_linger_ms=settings.producer_linger_ms,
        web_enabled=False,
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_seconds,
        consumer_group_instance_id=settings.instance_id,
        broker_heartbeat_interval=max(settings.session_timeout_seconds / 10, 0.5),
        autodiscover=False,
        Topic=Topic,  # no turn of the event loop per record sent
        Stream=Stream,  # no wake-ups of an idle ledger
        Table=Table,  # its changelog writes, which the ledger waits for before it marks a batch
    )
    # a stop lets the upstream calls running end (the executors' drain), then gives Kafka
    # KAFKA_STOP_SECONDS to take what the worker holds
    app.stop_seconds = settings.stop_drain_seconds + KAFKA_STOP_SECONDS
    earlier = settings.data_dir / "worker" / settings.worker_name
    if (earlier / "v1").is_dir():  # the layout before the app id was in the path
        app.task(_earlier_store_notice(earlier, datadir))
    return app


def _earlier_store_notice(earlier: Path, datadir: Path) -> Callable[[], Awaitable[None]]:
    """The line naming a table store of the earlier layout, said once the worker runs: faust
    sets up the worker's logging only then, and a line logged while the app is built is lost."""

    async def earlier_table_store() -> None:
        log.info(
            "%s is a table store of an earlier layout that no app reads any more (this worker "
            "recovers its table from the changelog into %s): remove it",
            earlier,
            datadir,
        )

    return earlier_table_store


def _topics(app: faust.App, settings: Settings) -> Topics:
    def topic(name: str) -> Any:
        spec = BY_NAME[name]
        return app.topic(spec.full_name(settings), partitions=settings.partitions, **RAW)

    requests = topic("requests")
    # by the count the topics were created with, never the broker's: see partition_of
    requests.partition_of = topics_module.partition_of(settings.partitions)
    return Topics(
        requests=requests,
        generate=topic("generate"),
        completions=topic("completions"),
        lifecycle=topic("lifecycle"),
        deadletter=topic("deadletter"),
    )


def _executor(
    settings: Settings, name: str, topic: str, work: Work[Any], max_in_flight: int, window: int
) -> ExecutorParts:
    pacing = PacerConfig(
        initial_window=window,
        max_window=max_in_flight,
        safety=settings.pacing_safety,
        burst_s=settings.pacing_burst_seconds,
        circuit_after=settings.circuit_failures,
        open_max=settings.circuit_max_open_seconds,
        throttle_max=settings.circuit_max_open_seconds,
    )
    scheduler = Scheduler(
        name,
        max_in_flight=max_in_flight,
        max_wait_s=settings.max_wait_seconds,
        refusal_s=settings.refusal_seconds,
        pacer_config=pacing,
    )
    config = ExecutorConfig(
        name=name,
        topic=topic,
        group=topics_module.consumer_group(settings, name),
        instance=f"{settings.instance_id}-{name}",
        consumer_options=group_options(settings),
        watch_ms=policy_from(settings).deadline_span_ms(work.stage),
    )
    return ExecutorParts(config, scheduler, work)


def upstream_clients(
    settings: Settings, chat: ChatClient | None = None, talkable: TalkableClient | None = None
) -> tuple[ChatClient, TalkableClient]:
    """The OpenAI and Talkable adapters (those given, else made), each with as many
    connections as its executor calls at once."""
    return chat or ChatClient(
        settings.openai_base_url,
        settings.openai_timeout_seconds,
        max_connections=settings.generator_max_in_flight,
    ), talkable or TalkableClient(
        settings.talkable_base_url,
        settings.talkable_timeout_seconds,
        max_connections=settings.publisher_max_in_flight,
    )


def build_executors(
    settings: Settings,
    topics: Topics,
    dead_letters: DeadLetters,
    clock: Clock,
    secrets: SecretBox,
    chat: ChatClient,
    talkable: TalkableClient,
) -> list[Executor]:
    """The generator and the publisher: in the worker (``TALKSTREAM_EXECUTORS=worker``) or in a
    process of their own (``streams.executors_process``). Each call holds a socket: the process
    may hold as many open files as they call at once (:func:`openfiles.raise_limit`)."""
    openfiles.raise_limit(
        openfiles.needed_by_executors(
            settings.generator_max_in_flight, settings.publisher_max_in_flight
        ),
        setting="TALKSTREAM_GENERATOR_MAX_IN_FLIGHT + TALKSTREAM_PUBLISHER_MAX_IN_FLIGHT",
    )
    return [
        Executor(*parts, topics=topics, dead_letters=dead_letters, clock=clock)
        for parts in (
            _executor(
                settings,
                "generator",
                BY_NAME["generate"].full_name(settings),
                Generate(chat, secrets, settings.max_text_bytes),
                settings.generator_max_in_flight,
                settings.openai_initial_window,
            ),
            _executor(
                settings,
                "publisher",
                BY_NAME["completions"].full_name(settings),
                Publish(talkable, secrets),
                settings.publisher_max_in_flight,
                settings.talkable_initial_window,
            ),
        )
    ]


def build(
    settings: Settings,
    *,
    chat: ChatClient | None = None,
    talkable: TalkableClient | None = None,
    projection: ProjectionStore | None = None,
    secrets: SecretBox | None = None,
    clock: Clock | None = None,
) -> Worker:
    app = _faust_app(settings)
    topics = _topics(app, settings)
    table = app.Table(
        LEDGER_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,  # bytes: faust stores them raw (our codec does the JSON)
        value_type=bytes,
    )
    clock = clock or SystemClock()
    metrics = WorkerMetrics()
    dead_letters = DeadLetters(topics.deadletter, metrics.dead_letters, clock)
    secrets = secrets or load_secret_box(settings)
    read_range = functools.partial(topics_module.read_range, settings)

    ledger.register(
        app,
        topics=topics,
        table=table,
        policy=policy_from(settings),
        read_range=read_range,
        log_start=functools.partial(topics_module.log_start, settings),
        deadline_check_seconds=settings.deadline_check_interval_seconds,
        gap_check_seconds=settings.gap_check_interval_seconds,
        rebalance_grace_ms=(
            None
            if settings.rebalance_grace_seconds is None
            else int(settings.rebalance_grace_seconds * 1000)
        ),
        dead_letters=dead_letters,
        metrics=metrics,
        clock=clock,
    )
    running = []
    if settings.executors == "worker":  # else a process of their own (``talkstream executors``)
        clients = upstream_clients(settings, chat, talkable)
        running = build_executors(settings, topics, dead_letters, clock, secrets, *clients)
    else:  # whose own /metrics serve their series
        metrics.without_upstream()
    executors.register(app, executors=running, metrics=metrics, drain_s=settings.stop_drain_seconds)
    own_projector = None
    if settings.projector == "worker":  # else a process of its own (see ``talkstream worker``)
        from streams.agents import projector
        from streams.agents.projector import Projector, ProjectorConfig
        from streams.projection.store import ProjectionStore

        own_projector = Projector(
            ProjectorConfig.of(settings),
            # migrated once its database answers (``Projector.run``): a database down does
            # not stop the worker's decisions
            projection
            or ProjectionStore.from_url(settings.resolved_database_url, migrate_schema=False),
            dead_letters,
        )
        projector.register(app, projector=own_projector, metrics=metrics)

    @app.task
    async def worker_http() -> None:
        await serve_or_log(app, metrics, settings, "worker")

    return Worker(
        app=app, topics=topics, metrics=metrics, executors=running, projector=own_projector
    )
