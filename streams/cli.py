"""The ``talkstream`` command."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeGuard

import click

from streams import heap, openfiles
from streams.errors import BrokerUnavailable, KafkaAuthError, TalkstreamError
from streams.ops.commands import register as register_ops
from streams.ops.options import DATABASE_URL_META
from streams.settings import LISTEN_FIELDS, LISTENS_AT, Settings

if TYPE_CHECKING:
    from sqlalchemy.exc import SQLAlchemyError

    from streams.dev.kafka import EmbeddedKafka
    from streams.dev.kafka_cluster import KafkaCluster


def _settings() -> Settings:
    return Settings()


def _setup_logging(level: str) -> None:
    from streams.logs import setup

    setup(level, _settings().log_format)


class _Main(click.Group):
    """Settings that do not validate end any command with one line naming each variable (the
    values are not repeated: a secret's would be), not with pydantic's traceback; so does a
    database that cannot be reached or is not one, a database URL that cannot be used (its
    driver not installed, its SQLite directory not made), and a server whose address cannot be
    had (naming the address and what sets it). Kafka out of reach, or a TLS handshake with it
    that failed, is said with where its address came from (TALKSTREAM_KAFKA_BOOTSTRAP, or its
    default when not set)."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        from streams.settings import describe_invalid

        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # a command says a TalkstreamError as `ClickException(str(exc)) from None`
            # out of reach, or a TLS handshake that failed (a plain listener's address, or
            # another host's): where the address came from, as the security settings are said
            kafka = exc.__context__
            if (
                isinstance(kafka, BrokerUnavailable)
                or (isinstance(kafka, KafkaAuthError) and kafka.tls)
            ) and ctx.invoked_subcommand in _KAFKA_FROM_SETTINGS:
                exc.message = f"{exc.message}; {_kafka_address_source()}"
            raise
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            raise click.ClickException(describe_invalid(exc)) from None
        except socket.gaierror:
            unknown = _unknown_listen_host(ctx.invoked_subcommand or "")
            if unknown is None:
                raise
            raise click.ClickException(unknown) from None
        except OSError as exc:
            unusable = _unusable_data_dir(exc)
            if unusable is not None:
                raise click.ClickException(unusable) from None
            if not _cannot_listen(exc):
                raise
            where = _LISTENS_AT.get(ctx.invoked_subcommand or "")
            hint = f" (set by {where})" if where else ""
            raise click.ClickException(f"cannot listen on {_bind_address(exc)}{hint}") from None
        except Exception as exc:
            if not _database_unusable(exc):
                raise
            from streams.projection.engine import describe_database_error

            # a SQLite file's directory that could not be made: the data directory's, if under it
            cause = exc.__cause__
            in_data_dir = _unusable_data_dir(cause) if isinstance(cause, OSError) else None
            url = ctx.meta.get(DATABASE_URL_META)
            sub = self.commands.get(ctx.invoked_subcommand or "")
            option = sub is not None and any(p.name == "database_url" for p in sub.params)
            said = describe_database_error(exc, url, option=option)
            raise click.ClickException(in_data_dir or said) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not isinstance(command, click.Group):
            _refuse_repeats(command, name or "", rest, ctx)
        return name, command, rest


def _refuse_repeats(
    command: click.Command, name: str, args: list[str], parent: click.Context
) -> None:
    """An option of one value given twice, or a text option given empty, is a usage error
    naming it. click keeps the last of a repeated option: ``redrive --request-id A
    --request-id B`` redrove B alone and said nothing of A. An empty value (a shell variable
    not set: ``--database-url "$OLD_DB"``) read as no option, or as a filter: ``migrate --to
    0004 --database-url ""`` took the default projection down, ``redrive --reason-contains ""``
    selected every letter, ``--site ""`` none, without a word."""
    ctx = click.Context(command, info_name=name, parent=parent)
    try:
        values, _, order = command.make_parser(ctx).parse_args(args=list(args))
    except click.ClickException:
        return  # what the command's own parse says
    single = [
        param
        for param in order
        if isinstance(param, click.Option) and not (param.multiple or param.count or param.is_flag)
    ]
    for param, times in Counter(single).items():
        option = max(param.opts, key=len)
        if times > 1:
            raise click.BadOptionUsage(
                option,
                f"{option} is given {times} times: it takes one value (run the command once "
                "for each)",
                ctx=ctx,
            )
        value = values.get(param.name or "")
        if param.type is click.STRING and isinstance(value, str) and not value.strip():
            raise click.BadOptionUsage(
                option, f"{option} is empty: give it a value, or leave it out", ctx=ctx
            )


# the commands that find Kafka at TALKSTREAM_KAFKA_BOOTSTRAP (bench has --bootstrap, or starts
# its own broker; kafka and dev start theirs)
_KAFKA_FROM_SETTINGS = frozenset(
    {"topics", "replay", "redrive", "worker", "ingress", "projector", "executors", "console"}
)


def _kafka_address_source() -> str:
    """Where the Kafka address a command failed to reach came from: an operator who never set
    it is told the default was used, and one who did sees the value taken."""
    settings = Settings()
    if "kafka_bootstrap" in settings.model_fields_set:
        return f"Kafka's address is TALKSTREAM_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}"
    return (
        f"Kafka's address is the default {settings.kafka_bootstrap} "
        "(TALKSTREAM_KAFKA_BOOTSTRAP is not set)"
    )


# what sets the address each serving command listens on
_LISTENS_AT = {**LISTENS_AT, "standin": "--host and --port"}


def _unusable_data_dir(exc: OSError) -> str | None:
    """What to say when a file a command keeps under TALKSTREAM_DATA_DIR could not be made or
    opened (the directory is a file, missing a parent that cannot be made, not writable);
    None for any other error."""
    if exc.filename is None or not exc.strerror:
        return None
    try:
        data_dir = Settings().data_dir
    except Exception:  # settings that do not validate are said elsewhere
        return None
    path = Path(str(exc.filename)).absolute()
    if path != data_dir and data_dir not in path.parents:
        return None
    # mkdir on a file: "File exists"; what the operator must fix is a file in the way
    why = "Not a directory" if isinstance(exc, FileExistsError) else exc.strerror
    return f"cannot use the data directory {data_dir} (TALKSTREAM_DATA_DIR): {why}: {exc.filename}"


def _unknown_listen_host(command: str) -> str | None:
    """What to say when a server's host is no address (``999.1.1.1``, ``not a host``): the
    variable that sets it, if that is the host the resolver could not find; None otherwise."""
    if command not in LISTEN_FIELDS:
        return None
    field = LISTEN_FIELDS[command][0]
    host = getattr(Settings(), field)
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot listen on {host!r}: {exc.strerror} (set by TALKSTREAM_{field.upper()})"
    return None


def _cannot_listen(exc: OSError) -> bool:
    """A server's address taken, not this machine's, or not allowed (a port below 1024)."""
    refused = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)
    return exc.errno in refused and "bind" in str(exc)


def _bind_address(exc: OSError) -> str:
    """``host:port: reason`` from asyncio's "error while attempting to bind on address
    ('127.0.0.1', 8080): address already in use"."""
    found = re.search(r"address \('([^']*)', (\d+)[^)]*\): (.+)$", str(exc))
    return f"{found[1]}:{found[2]}: {found[3]}" if found else str(exc)


def _database_unusable(exc: Exception) -> TypeGuard[SQLAlchemyError]:
    """A database that cannot be reached, a file that is not one, or a URL that cannot be used
    (SQLAlchemy is imported by the commands that use a database, not for every command: none
    raised this if not)."""
    if "sqlalchemy.exc" not in sys.modules:
        return False
    from streams.projection.engine import database_unusable

    return database_unusable(exc)


# the one-shot commands that find Kafka at TALKSTREAM_KAFKA_BOOTSTRAP: a first contact that
# goes unanswered is said on stderr (the servers log theirs)
_SAY_KAFKA_WAITS = frozenset({"topics", "replay", "redrive"})


def _say_on_stderr(line: str) -> None:
    click.echo(line, err=True)


@click.group(cls=_Main)
@click.pass_context
def main(ctx: click.Context) -> None:
    """talkstream: Talkable webhooks → OpenAI text → Talkable, over Kafka."""
    # a command that sets up no logging (topics, replay, redrive, bench...) would print
    # aiokafka's records through logging's last resort: "Unable connect to ..." above the
    # command's own one-line error. The servers' logging setup still receives them (propagation).
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    says = ctx.invoked_subcommand in _SAY_KAFKA_WAITS
    if says or "streams.kafka_options" in sys.modules:  # else imported for nothing
        from streams.kafka_options import say_waits

        say_waits(_say_on_stderr if says else None)


# --- kafka ------------------------------------------------------------------------------------


def _broker(settings: Settings, nodes: int | None = None) -> EmbeddedKafka | KafkaCluster:
    """The single broker, or the local cluster: ``nodes`` > 1, or (``nodes`` None) the
    cluster last started under ``DATA_DIR`` if there is one."""
    from streams.dev.kafka_cluster import KafkaCluster
    from streams.dev.supervisor import broker_address, embedded_broker

    if nodes is None:
        found = KafkaCluster.from_manifest(settings.data_dir)
        if found is not None:
            return found
    if nodes is None or nodes == 1:
        return embedded_broker(settings)
    host, port = broker_address(settings)
    return KafkaCluster(
        settings.data_dir, nodes, host, base_port=port, version=settings.kafka_version
    )


@main.group()
def kafka() -> None:
    """The embedded Kafka broker (KRaft; one node, or a local cluster), for development and
    tests."""


@kafka.command("start")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=90.0,
    show_default=True,
    help="seconds to wait for ready",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 9),
    help="3: a replicated cluster on this host (ports from KAFKA_BOOTSTRAP's on, 2 per node); "
    "default: the cluster started last if it was not stopped, else 1",
)
def kafka_start(timeout: float, nodes: int | None) -> None:
    """Start the broker (no-op when it runs already) and create the topics."""
    from streams.dev.kafka import KafkaLauncherError, PortUnavailable
    from streams.dev.kafka_cluster import KafkaCluster, refuse_another_layout
    from streams.dev.supervisor import BOOTSTRAP, broker_addresses, what_sets_listener
    from streams.topics import ensure_topics

    settings = _settings()
    try:
        if nodes is not None:
            refuse_another_layout(settings.data_dir, nodes)
        broker = _broker(settings, nodes)
        nodes = len(broker.nodes) if isinstance(broker, KafkaCluster) else 1
        # seconds of silence otherwise: a JVM starting, a KRaft quorum forming
        status = broker.start(timeout=timeout, on_wait=lambda line: click.echo(line, err=True))
    except PortUnavailable as exc:  # the port named with what sets it
        cluster = isinstance(broker, KafkaCluster)
        where = (
            f"{BOOTSTRAP}: the cluster's ports run from its port on, two per node"
            if cluster
            else what_sets_listener(broker_addresses(settings), exc)
        )
        raise click.ClickException(f"{exc} (set by {where})") from None
    except KafkaLauncherError as exc:
        raise click.ClickException(str(exc)) from None
    if nodes > 1:
        settings = _cluster_settings(settings, status.bootstrap, nodes)
    try:
        created = asyncio.run(ensure_topics(settings))
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(status.describe())
    if created:
        click.echo(f"created topics: {', '.join(created)}")
    if nodes > 1:
        click.echo(
            "every talkstream process needs:\n"
            f"  TALKSTREAM_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}\n"
            f"  TALKSTREAM_REPLICATION_FACTOR={settings.replication_factor}\n"
            f"  TALKSTREAM_MIN_INSYNC_REPLICAS={settings.insync_replicas}"
        )


def _cluster_settings(settings: Settings, bootstrap: str, nodes: int) -> Settings:
    """The cluster's bootstrap, and its replication (3 and 2 on three nodes) unless set."""
    from streams.dev.kafka_cluster import cluster_replication

    replication, insync = cluster_replication(nodes)
    given = settings.model_fields_set
    update: dict[str, object] = {"kafka_bootstrap": bootstrap}
    if "replication_factor" not in given:
        update["replication_factor"] = replication
    if "min_insync_replicas" not in given:
        update["min_insync_replicas"] = insync
    return settings.model_copy(update=update)


@contextlib.contextmanager
def _launcher_errors() -> Iterator[None]:
    """A launcher's refusal (settings that give no broker, a manifest that cannot be read) is
    one line and exit 1 for `stop` and `status` as it is for `start`, not a traceback."""
    from streams.dev.kafka import KafkaLauncherError

    try:
        yield
    except KafkaLauncherError as exc:
        raise click.ClickException(str(exc)) from None


@kafka.command("stop")
def kafka_stop() -> None:
    """Stop the broker (or every node of the cluster) started by `kafka start`."""
    with _launcher_errors():
        stopped = _broker(_settings()).stop()
    click.echo("stopped" if stopped else "not running")


@kafka.command("status")
def kafka_status() -> None:
    """Say whether the broker (each node of a cluster) runs, where, with which pid, and
    where its data and log are: exit 0 while it runs, 3 when it does not."""
    with _launcher_errors():
        status = _broker(_settings()).status()
    click.echo(status.describe())
    sys.exit(0 if status.running else 3)


@kafka.command("fetch-jars")
@click.option("--all", "every", is_flag=True, help="every supported Kafka version (the tests')")
def kafka_fetch_jars(every: bool) -> None:
    """Resolve the broker's jars from Maven Central (no-op when present)."""
    from streams.dev.kafka import VERSIONS, EmbeddedKafka, KafkaLauncherError

    settings = _settings()
    versions = list(VERSIONS) if every else [settings.kafka_version]
    for version in versions:
        try:
            path = EmbeddedKafka(settings.data_dir, version=version).fetch_jars()
        except KafkaLauncherError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"kafka {version} jars: {path}")


@main.command("topics")
def topics_cmd() -> None:
    """Create any missing topic (every process also does this at start)."""
    from streams.topics import ensure_topics

    try:
        created = asyncio.run(ensure_topics(_settings()))
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


# --- the running system -----------------------------------------------------------------------


# what a command holds for as long as its process runs (the worker's hold on its folder)
_HELD: list[object] = []

LOG_FORMAT = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="override TALKSTREAM_LOG_FORMAT: json = one object per line",
)


@main.command()
@LOG_FORMAT
def worker(log_format: str | None) -> None:
    """Run the faust worker: ledger, generator, publisher, projector (TALKSTREAM_PROJECTOR and
    TALKSTREAM_EXECUTORS say where the projector and the executors run)."""
    import faust

    from streams.app import build
    from streams.errors import TalkstreamError
    from streams.logs import logging_config
    from streams.secrets import load_secret_box
    from streams.tabledir import give_back, hold_table_dir
    from streams.topics import consumer_group, coordinators_ready, ensure_topics

    settings = _settings()
    roles = [None, "generator", "publisher"]
    if settings.projector == "worker":  # a projector process asks for its own
        roles.append("projector")
    groups = [consumer_group(settings, role) for role in roles]

    async def ready() -> None:
        await ensure_topics(settings)
        await coordinators_ready(settings, groups)

    if settings.projector != "off":
        _database_url_usable(settings.resolved_database_url)
    held: list[IO[str]] = []
    made: list[Path] = []  # what its holds made: removed if it does not run
    try:  # refused when another worker of its name runs on its folder, before Kafka is asked
        held.append(hold_table_dir(settings, made=made))
        if settings.projector == "worker":  # its projector's member id is its own
            held.append(hold_table_dir(settings, "projector", made=made))
        if settings.executors == "worker":  # so are its executors'
            held.append(hold_table_dir(settings, "executors", made=made))
        secrets = load_secret_box(settings)
        asyncio.run(ready())
    except TalkstreamError as exc:  # no keys, Kafka out of reach, credentials refused: say why
        give_back(held, made)  # a worker that does not run holds nothing, leaves nothing
        raise click.ClickException(str(exc)) from None
    _HELD.extend(held)  # held while the worker runs: never closed by the garbage collector
    asyncio.set_event_loop(asyncio.new_event_loop())
    runtime = build(settings, secrets=secrets)
    if settings.projector == "process":
        _child(runtime.app, "projector")
    if settings.executors == "process":  # their drain, then Kafka's time, then a margin
        from streams.faust_transport import KAFKA_STOP_SECONDS

        _child(runtime.app, "executors", settings.stop_drain_seconds + KAFKA_STOP_SECONDS + 5)
    heap.settle()
    faust.Worker(
        runtime.app,
        loglevel=settings.log_level.upper(),
        logging_config=logging_config(settings.log_level, log_format or settings.log_format),
    ).execute_from_commandline()


def _database_url_usable(url: str) -> None:
    """The projector's database URL checked before anything starts (the projector child's,
    as the worker checks its own projector's): one that can never work (it does not parse,
    its driver is not installed) ends the worker with the same one line (``_Main``), where
    the child crashed at every restart, once a second, forever. Nothing is connected to, nor
    made (a SQLite file's directory is checked that it could be: the projector's migration
    makes it once its group has taken it): a database that is merely down is the
    projector's to wait for."""
    from streams.projection.engine import make_engine, sqlite_directory

    engine = make_engine(url, make_directory=False)
    try:
        sqlite_directory(engine, make=False)
    finally:
        engine.dispose()


def _child(app: Any, name: str, stop_seconds: float = 15.0) -> None:
    """The projector (or the executors) in a child process, so that its SQL work and its
    reading of [lifecycle] (their upstream calls) do not share the worker's GIL: started now,
    watched every second, told to stop as the worker starts to stop (so both stop at once),
    waited for at exit (``stop_seconds``, then killed)."""
    import atexit
    import functools

    from streams.children import ChildProcess

    child = ChildProcess(name)
    child.start()
    atexit.register(functools.partial(child.stop, stop_seconds))
    app.timer(interval=1.0, name=f"{name}_process")(child.watch)

    async def stopping() -> None:  # as the worker starts to stop
        child.terminate()

    app.before_stop.append(stopping)


@main.command()
@LOG_FORMAT
def projector(log_format: str | None) -> None:
    """Run the projector alone: [lifecycle] → SQL. The worker runs it itself unless
    TALKSTREAM_PROJECTOR=off (then run this; =process: the worker starts this as its child)."""
    from streams.agents.projector import serve, until_topics_fit
    from streams.children import PARENT_ENV, stop_signals
    from streams.errors import TalkstreamError
    from streams.logs import setup as setup_logging
    from streams.tabledir import give_back, hold_table_dir
    from streams.topics import consumer_group, coordinators_ready, ensure_topics

    signals = stop_signals()
    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    heap.settle()

    made: list[Path] = []  # what its hold made: removed if it is refused
    try:  # refused when another projector of its name runs on its folder (a worker's own too)
        held = hold_table_dir(settings, "projector", made=made)
    except TalkstreamError as exc:
        give_back([], made)
        raise click.ClickException(str(exc)) from None
    _HELD.append(held)

    async def started() -> None:
        # the worker's child, started again after partitions were added to the topics under
        # the running worker: says it once and asks again, rather than exiting at every start
        await until_topics_fit(
            lambda: ensure_topics(settings), again=os.environ.get(PARENT_ENV) is not None
        )
        await coordinators_ready(settings, [consumer_group(settings, "projector")])
        await serve(settings)

    async def run() -> None:
        task = asyncio.ensure_future(started())  # a stop while it asks about the topics too
        loop = asyncio.get_running_loop()
        for signum in signals:
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    except TalkstreamError as exc:  # Kafka out of reach, credentials refused: say why
        give_back([held], made)  # and leave no folder of its own behind
        raise click.ClickException(str(exc)) from None


@main.command()
@LOG_FORMAT
def executors(log_format: str | None) -> None:
    """Run the executors alone: [generate] → OpenAI and [completions] → Talkable, their
    results → [requests]. The worker runs them itself unless TALKSTREAM_EXECUTORS=off (then
    run this; =process: the worker starts this as its child)."""
    from streams.children import stop_signals
    from streams.errors import TalkstreamError
    from streams.executors_process import serve
    from streams.logs import setup as setup_logging
    from streams.secrets import load_secret_box
    from streams.tabledir import give_back
    from streams.topics import consumer_group, coordinators_ready, ensure_topics

    signals = stop_signals()
    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    heap.settle()
    made: list[Path] = []
    held: list[IO[str]] = []
    try:  # refused when a worker of its name runs its own, or another of its name runs
        held.append(_executors_hold(settings, made))
        secrets = load_secret_box(settings)
    except TalkstreamError as exc:
        give_back(held, made)
        raise click.ClickException(str(exc)) from None
    _HELD.extend(held)
    groups = [consumer_group(settings, role) for role in ("generator", "publisher")]

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in signals:
            loop.add_signal_handler(signum, stopping.set)
        await ensure_topics(settings)
        await coordinators_ready(settings, groups)
        await serve(settings, secrets, stopping)

    try:
        asyncio.run(run())
    except TalkstreamError as exc:  # Kafka out of reach, credentials refused: say why
        give_back(held, made)
        raise click.ClickException(str(exc)) from None


def _executors_hold(settings: Settings, made: list[Path]) -> IO[str]:
    """The executors' hold on the worker's folder. The worker's child waits for it while
    another holds it: the child of the worker's run before this one (killed, its child
    stopped by the kernel) ending its calls. Started at once beside it, it took the same
    member ids, and told that run's calls lost while they ran: each called twice."""
    from streams.children import PARENT_ENV
    from streams.errors import ConfigError
    from streams.tabledir import hold_table_dir

    said = False
    while True:
        try:
            return hold_table_dir(settings, "executors", made=made)
        except ConfigError as held:
            if os.environ.get(PARENT_ENV) is None:
                raise
            if not said:
                logging.getLogger(__name__).info(
                    "executors wait for the executors before them to stop (%s)", held
                )
                said = True
            time.sleep(EXECUTORS_WAIT_SECONDS)


# how often the worker's executors child asks again for the hold of the one before it
EXECUTORS_WAIT_SECONDS = 0.5


@main.command()
@LOG_FORMAT
def ingress(log_format: str | None) -> None:
    """Serve POST /chat-gpt/generate, /healthz, /readyz and /metrics."""
    from aiohttp import web

    from streams.errors import TalkstreamError
    from streams.ingress import AccessLogger, KafkaSink, build_ingress
    from streams.kafka_options import client_options, diagnose
    from streams.logs import announce
    from streams.logs import setup as setup_logging
    from streams.refusals import run_app
    from streams.secrets import load_secret_box
    from streams.topics import LEDGER_TABLE, ensure_topics

    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    openfiles.raise_limit()  # a socket for each webhook's client, however many come at once
    try:
        secrets = load_secret_box(settings)
    except TalkstreamError as exc:
        raise click.ClickException(str(exc)) from None

    async def app() -> web.Application:
        try:
            await ensure_topics(settings)
        except Exception as exc:  # the ingress answers 503 until Kafka is back
            logging.getLogger(__name__).warning("topics not ensured: %s", exc)
        sink = KafkaSink(
            client_options(settings),
            stall_seconds=settings.kafka_stall_seconds,
            ledger_changelog=settings.topic(f"{LEDGER_TABLE}-changelog"),
            partitions=settings.partitions,
            diagnose=lambda: diagnose(settings),
        )
        built = build_ingress(settings, sink, secrets)
        heap.settle()
        return built

    run_app(  # aiohttp's, answering what it refuses itself in JSON
        app(),
        access_log_class=AccessLogger,
        host=settings.ingress_host,
        port=settings.ingress_port,
        keepalive_timeout=settings.ingress_idle_timeout_seconds,
        # webhooks in progress wait for Kafka: long while Kafka is down
        shutdown_timeout=settings.ingress_shutdown_seconds,
        print=announce("ingress"),
    )


@main.command()
@LOG_FORMAT
def console(log_format: str | None) -> None:
    """Serve the operator console: overview, search, timelines, people, dead letters and
    redrive (TALKSTREAM_CONSOLE_TOKEN required; 127.0.0.1:8090 by default)."""
    from streams.console.app import run_console
    from streams.console.auth import check_token
    from streams.logs import setup as setup_logging

    settings = _settings()
    setup_logging(settings.log_level, log_format or settings.log_format)
    try:
        check_token(settings.console_token.get_secret_value() if settings.console_token else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    run_console(settings)


PORT = click.IntRange(0, 65535)
SECONDS = click.FloatRange(min=0)


@main.group()
def standin() -> None:
    """Local stand-ins for OpenAI and Talkable (dev mode, tests, benchmarks)."""


@standin.command("openai")
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", type=PORT, default=8081, show_default=True, help="0: any free port")
@click.option(
    "--latency", type=SECONDS, default=0.0, show_default=True, help="seconds per completion"
)
def standin_openai(host: str, port: int, latency: float) -> None:
    """OpenAI Chat Completions stand-in."""
    from streams.dev import openai_standin

    _setup_logging("info")
    config = openai_standin.OpenAIStandinConfig(latency_seconds=latency)
    with _standin_host(host):
        openai_standin.run(
            host, port, config, on_ready=lambda h: click.echo(f"openai stand-in at {h.url}")
        )


@standin.command("talkable")
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to listen on")
@click.option("--port", type=PORT, default=8082, show_default=True, help="0: any free port")
@click.option("--latency", type=SECONDS, default=0.0, show_default=True, help="seconds per call")
def standin_talkable(host: str, port: int, latency: float) -> None:
    """Talkable API v2 stand-in."""
    from streams.dev import talkable_standin

    _setup_logging("info")
    config = talkable_standin.TalkableStandinConfig(latency_seconds=latency)
    with _standin_host(host):
        talkable_standin.run(
            host, port, config, on_ready=lambda h: click.echo(f"talkable stand-in at {h.url}")
        )


@contextlib.contextmanager
def _standin_host(host: str) -> Iterator[None]:
    """A ``--host`` that is no address (``999.1.1.1``) is one line naming it, as a server's
    host setting is, not the resolver's traceback. A stand-in answers as many calls at once as
    the executors make: it may hold as many open files as its hard limit allows."""
    openfiles.raise_limit()
    try:
        yield
    except socket.gaierror as exc:
        raise click.ClickException(
            f"cannot listen on {host!r}: {exc.strerror} (set by --host)"
        ) from None


@main.command()
@click.option(
    "--openai-port",
    type=click.IntRange(1, 65535),
    default=8081,
    show_default=True,
    help="the OpenAI stand-in's port on 127.0.0.1 (unless TALKSTREAM_OPENAI_BASE_URL is set)",
)
@click.option(
    "--talkable-port",
    type=click.IntRange(1, 65535),
    default=8082,
    show_default=True,
    help="the Talkable stand-in's port on 127.0.0.1 (unless TALKSTREAM_TALKABLE_BASE_URL is set)",
)
def dev(openai_port: int, talkable_port: int) -> None:
    """Everything at once: Kafka, worker, ingress, the console, and stand-ins unless real URLs
    are set."""
    from streams.dev.supervisor import run_dev

    sys.exit(run_dev(_settings(), openai_port=openai_port, talkable_port=talkable_port))


# the benchmark harness is dev tooling: it lives in the checkout's bench/, not in the package
CHECKOUT = Path(__file__).resolve().parents[1]


@main.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """The pipeline measured beside a raw Kafka relay and an inline handler (from a checkout;
    `talkstream bench --help` for its options)."""
    if not (CHECKOUT / "bench" / "command.py").exists():
        raise click.ClickException(
            "the benchmark harness runs from a checkout of talkstream (bench/): `make bench`"
        )
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    from bench.command import bench as harness

    harness.main(ctx.args, prog_name="talkstream bench")


register_ops(main)
