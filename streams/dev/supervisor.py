"""``talkstream dev``: the whole system on one machine, stopped together by Ctrl-C: the broker,
the stand-ins, a worker, the ingress and the operator console (with a token made for the run,
printed with its address, unless ``TALKSTREAM_CONSOLE_TOKEN`` is set).

Nothing starts unless everything can: a second ``dev`` on the same data directory (its broker,
its consumer group, its SQLite file) is refused, and so is an address one of the servers could
not have (the broker's two included, unless it runs already), before anything is started,
rather than after a banner that another run's servers appeared to confirm, or a broker's stack
trace; a refused start leaves no ``dev.lock`` (``streams.dev.datadir``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import logging.handlers
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.dev.datadir import DevRefused, hold_data_dir
from streams.dev.kafka import EmbeddedKafka, KafkaLauncherError, PortUnavailable
from streams.errors import ConfigError, TalkstreamError
from streams.runtime import child_process
from streams.secrets import dev_key, load_secret_box
from streams.settings import (
    LISTENS_AT,
    Settings,
    url_host,
)
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


def embedded_broker(settings: Settings) -> EmbeddedKafka:
    (host, port, _), (_, controller_port, _) = broker_addresses(settings)
    return EmbeddedKafka(
        settings.data_dir,
        host=host,
        port=port,
        controller_port=controller_port,
        version=settings.kafka_version,
    )


def broker_address(settings: Settings) -> tuple[str, int]:
    """Host and port of the first bootstrap server: where the embedded broker listens (the
    first node of a local cluster)."""
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    return host or "127.0.0.1", int(port)


# each child's log (``DATA_DIR/logs/<name>.log``) is rotated at this size, keeping this many
# older files (``<name>.log.1`` the newest): a worker and an ingress under 10 webhooks/s wrote
# about 170 MB a day into files that only grew
LOG_MAX_BYTES = 20 * 1024 * 1024
LOG_BACKUPS = 5


def _spawn(
    name: str, args: list[str], env: dict[str, str], logs: Path, copiers: list[threading.Thread]
) -> subprocess.Popen[bytes]:
    """A child in a session of its own: Ctrl-C reaches only the supervisor, which stops the
    children in order (so a child stopping is never mistaken for one that failed). Its output
    goes to its rotated log (``copiers`` gets the thread that copies it there)."""
    proc = subprocess.Popen(
        child_process(*args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    copiers.append(copy_to_log(proc, logs / f"{name}.log"))
    return proc


def copy_to_log(
    proc: subprocess.Popen[bytes],
    path: Path,
    max_bytes: int = LOG_MAX_BYTES,
    backups: int = LOG_BACKUPS,
) -> threading.Thread:
    """Copy the child's output, line by line, to ``path``, rotated at ``max_bytes`` with
    ``backups`` older files kept (logging's RotatingFileHandler), until the child closes it."""
    assert proc.stdout is not None
    stream = proc.stdout
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(message)s"))

    def copy() -> None:
        try:
            for line in iter(stream.readline, b""):
                text = line.decode("utf-8", "replace").rstrip("\n")
                handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
        finally:
            stream.close()
            handler.close()

    thread = threading.Thread(target=copy, name=f"log-{path.stem}", daemon=True)
    thread.start()
    return thread


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status < 500:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _status_of(url: str) -> str:
    """What a ``/readyz`` that is not ready says of itself, for the line saying so."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return f"its /readyz: {response.status}"
    except urllib.error.HTTPError as exc:
        try:
            return f"its /readyz: {json.load(exc)['status']}"
        except (ValueError, KeyError, TypeError, OSError):
            return f"its /readyz: {exc.code}"
    except OSError as exc:
        return f"its /readyz did not answer: {exc}"


def console_readyz(settings: Settings, console: str) -> str | None:
    """The console's ``/readyz``, which ``dev`` waits for once the worker is ready, before it
    says everything runs (its pages read the projection: ``dev`` said it ran while the
    console's first page could say "no projection yet"; it waited for the login page only);
    None when no projector runs (``PROJECTOR=off``: none makes the projection)."""
    return None if settings.projector == "off" else f"{console}/readyz"


def _say(line: str) -> None:
    print(f"talkstream dev: {line}", file=sys.stderr, flush=True)


def database_hints(url: str) -> tuple[str, str | None]:
    """The banner's database (its password hidden) and a look into it with the database's own
    shell: ``sqlite3`` on the file, ``psql`` on the server's URL without the driver and the
    password (psql asks for it, or reads ``PGPASSWORD`` / ``~/.pgpass``); None for another."""
    from sqlalchemy.engine import URL

    from streams.projection.engine import parse_url, safe_url

    parsed = parse_url(url)
    query = shlex.quote("select request_id, state from requests")
    look = None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        look = f"sqlite3 {shlex.quote(parsed.database)} {query}"
    elif parsed.get_backend_name() == "postgresql":
        server = URL.create(
            "postgresql",
            username=parsed.username,
            host=parsed.host,
            port=parsed.port,
            database=parsed.database,
            query=parsed.query,
        )
        look = f"psql {shlex.quote(server.render_as_string(hide_password=False))} -c {query}"
    return safe_url(url), look


def talkstream_command(cwd: Path | None = None) -> str:
    """How another shell runs this talkstream: ``talkstream`` when its PATH finds this one (an
    activated virtual environment, an install), else this one's path (``make dev`` runs
    ``.venv/bin/talkstream``, which a fresh shell's PATH does not find), from ``cwd`` when it
    lies under it."""
    own = Path(sys.executable).with_name("talkstream")
    found = shutil.which("talkstream")
    if not own.is_file() or (found is not None and Path(found).resolve() == own.resolve()):
        return "talkstream"
    try:
        return shlex.quote(str(own.relative_to(cwd or Path.cwd())))
    except ValueError:
        return shlex.quote(str(own))


def curl_example(host: str, port: int) -> str:
    """A webhook to paste: to ``host`` as :func:`url_host` writes it, to reach the ingress."""
    body = {
        "site": "my-site",
        "email": "ada@example.com",
        "api_key": "talkable-api-key",
        "openai": {
            "messages": [{"role": "user", "content": "Write a one-line referral note for Ada."}],
            "api_key": "sk-local-dev",
            "max_tokens": 60,
        },
        "usage_limit": {
            "amount": "3",
            "duration_in_seconds": "3600",
            "start_time": str(int(time.time())),
            "current_time": str(int(time.time())),
            "current_usage_amount": "0",
        },
        "trigger_criteria": "true",
    }
    return (
        f"curl -s -X POST http://{host}:{port}/chat-gpt/generate "
        f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"
    )


Address = tuple[str, int, str]  # host, port, what sets it


def stands_in(settings: Settings, upstream: str) -> bool:
    """Whether ``dev`` runs a stand-in for this upstream (``openai_base_url``,
    ``talkable_base_url``): unless its URL is set (``TALKSTREAM_OPENAI_BASE_URL``, ...), to
    anything, the real API's own included."""
    return upstream not in settings.model_fields_set


def own_worker_url(settings: Settings) -> str | None:
    """The process this run starts whose ``/metrics`` has the upstream targets, for its
    console's pacing (``CONSOLE_WORKER_URLS`` not set: its default is the default worker port,
    maybe another run's worker): the worker, or its executors' child with
    ``EXECUTORS=process``, where the calls are made (the worker's has none of their figures).
    None when that one listens on any free port (0): not known here."""
    apart = settings.executors == "process"
    port = settings.executors_http_port if apart else settings.worker_http_port
    if not port:
        return None
    host = url_host(settings.worker_http_host, to_reach=True)
    return f"http://{host}:{port}"


def servers(settings: Settings, *, openai_port: int, talkable_port: int) -> list[Address]:
    """``(host, port, what sets it)`` for each server this run starts (port 0: any free one,
    nothing to check)."""
    found = [
        (settings.ingress_host, settings.ingress_port, LISTENS_AT["ingress"]),
        (settings.console_host, settings.console_port, LISTENS_AT["console"]),
        (settings.worker_http_host, settings.worker_http_port, LISTENS_AT["worker"]),
    ]
    if settings.projector == "process":  # the worker's projector child serves its own
        found.append(
            (settings.worker_http_host, settings.projector_http_port, LISTENS_AT["projector"])
        )
    if settings.executors == "process":  # so does its executors child
        found.append(
            (settings.worker_http_host, settings.executors_http_port, LISTENS_AT["executors"])
        )
    if stands_in(settings, "openai_base_url"):
        found.append(("127.0.0.1", openai_port, "--openai-port"))
    if stands_in(settings, "talkable_base_url"):
        found.append(("127.0.0.1", talkable_port, "--talkable-port"))
    return [server for server in found if server[1]]


BOOTSTRAP = "TALKSTREAM_KAFKA_BOOTSTRAP"
CONTROLLER_PORT = "TALKSTREAM_KAFKA_CONTROLLER_PORT"
MAX_PORT = 65535


def broker_addresses(settings: Settings) -> list[Address]:
    """The embedded broker's two listeners (clients, KRaft controller), each with what sets
    it; :class:`KafkaLauncherError` when the settings give both the same port."""
    host, port = broker_address(settings)
    controller = settings.kafka_controller_port
    if not controller and port == MAX_PORT:
        raise KafkaLauncherError(
            f"{BOOTSTRAP}'s port is {port}: the embedded broker's controller cannot have the "
            f"next; set {CONTROLLER_PORT}"
        )
    if not controller:
        default = f"{CONTROLLER_PORT}, by default {BOOTSTRAP}'s port + 1"
        return [(host, port, BOOTSTRAP), (host, port + 1, default)]
    if controller == port:
        raise KafkaLauncherError(
            f"{CONTROLLER_PORT} is {BOOTSTRAP}'s port ({port}): the embedded broker needs "
            "another port for its controller"
        )
    return [(host, port, BOOTSTRAP), (host, controller, CONTROLLER_PORT)]


def what_sets_listener(addresses: list[Address], failed: PortUnavailable) -> str:
    """What to change for a broker listener that cannot be had: the bootstrap, which gives
    both listeners their host, when the host is not this machine's; else what sets the port."""
    return BOOTSTRAP if failed.host_not_here else what_sets(addresses, failed.port)


def what_sets(addresses: list[Address], port: int) -> str:
    """What sets ``port`` among ``addresses``; the bootstrap when none has it."""
    return next((set_by for _, at, set_by in addresses if at == port), BOOTSTRAP)


def check_addresses(addresses: list[Address]) -> None:
    """:class:`DevRefused` for the first address that cannot be listened on now (bound the
    way the servers bind: ``SO_REUSEADDR``, so a port a stopped run left in TIME_WAIT is
    free), or that two of them would share. Each probe listens until all are checked, so the
    kernel says which would collide (``localhost`` and ``127.0.0.1``, a wildcard host)."""
    with contextlib.ExitStack() as held:
        checked: list[Address] = []
        for host, port, set_by in addresses:
            try:
                family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
                probe = held.enter_context(socket.socket(family))
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                probe.listen()
            except OSError as exc:
                reason = exc.strerror.lower() if exc.strerror else str(exc)
                shared = [earlier for _, at, earlier in checked if at == port]
                if shared and exc.errno == errno.EADDRINUSE:
                    raise DevRefused(
                        f"cannot listen on {host}:{port} for two servers: one set by "
                        f"{shared[0]}; the other by {set_by}"
                    ) from None
                raise DevRefused(
                    f"cannot listen on {host}:{port}: {reason} (set by {set_by})"
                ) from None
            checked.append((host, port, set_by))


def run_dev(settings: Settings, *, openai_port: int, talkable_port: int) -> int:
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(hold_data_dir(settings.data_dir))
            if settings.secret_keys is not None:  # the worker's and ingress's check, said first
                load_secret_box(settings)
            if settings.console_token is not None:  # the console's, said first too
                _check_console_token(settings.console_token.get_secret_value())
            _check_database_url(settings.resolved_database_url)
            kafka = broker_addresses(settings)
            broker = embedded_broker(settings)
            addresses = servers(settings, openai_port=openai_port, talkable_port=talkable_port)
            if broker.status().pid is None:  # else ours runs (`kafka start`): this run uses it
                addresses = kafka + addresses
            check_addresses(addresses)
        except (DevRefused, KafkaLauncherError, ConfigError) as exc:
            print(f"talkstream dev: {exc}", file=sys.stderr)
            return 1
        return _run(settings, broker, kafka, openai_port=openai_port, talkable_port=talkable_port)


def _check_console_token(token: str) -> None:
    """A console token of the operator's that the console would refuse (too short): said before
    anything starts, not as "console did not come up" once the rest runs."""
    from streams.console.auth import check_token

    try:
        check_token(token)
    except ValueError as exc:
        raise DevRefused(str(exc)) from None


def _check_database_url(url: str) -> None:
    """A projection URL no process could ever use (its driver not installed, no such dialect, a
    SQLite directory that cannot be made, a SQLite file there that is not a database): said
    before anything starts, as the worker and the console would each say it, not as "console
    did not come up" once the broker runs (a file that is not a database was not said at all:
    dev said it ran, its projector failing over and over in its log). A database server that
    is down is not refused: the projector waits for it."""
    from sqlalchemy.exc import ArgumentError, DatabaseError

    from streams.projection.engine import describe_database_error, make_engine

    try:
        engine = make_engine(url)
    except ArgumentError as exc:
        raise DevRefused(describe_database_error(exc, url, option=False)) from None
    try:
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and Path(database).is_file():
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT count(*) FROM sqlite_master")
    except DatabaseError as exc:
        if type(exc) is DatabaseError:  # "file is not a database", "... image is malformed"
            raise DevRefused(describe_database_error(exc, url, option=False)) from None
        # what may pass (OperationalError: locked, busy, ...) is the projector's to wait out
    finally:
        engine.dispose()


def watch(
    procs: dict[str, subprocess.Popen[bytes]], broker: EmbeddedKafka | None, logs: Path
) -> int:
    """Until one of ``procs`` exits (said, with where its log is: 1, and everything stops). The
    broker this run started (``broker``) exiting is said too, once, and the rest runs on: it
    may be an operator's ``talkstream kafka stop`` (an outage tried out), and ``talkstream
    kafka start`` brings it back, which is said too; until then the ingress answers 503."""
    watched = _BrokerWatch(broker) if broker is not None else None
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(
                    f"talkstream dev: {name} exited with {proc.returncode}; see {logs}/",
                    file=sys.stderr,
                )
                return 1
        if watched is not None:
            watched.look()
        time.sleep(0.5)


class _BrokerWatch:
    """Says the broker going away and coming back, once each time it does. The one this run
    started is watched as its child (its exit code); one started again by ``talkstream kafka
    start`` is that command's, watched by whether it runs and answers."""

    def __init__(self, broker: EmbeddedKafka) -> None:
        self.broker = broker
        self.down = False  # said to be gone, and not yet to be back
        self.restarted = False  # back: no longer this run's child

    def look(self) -> None:
        if self.down:
            if self._runs():
                self.down, self.restarted = False, True
                self._say(f"kafka is back on {self.broker.bootstrap}; webhooks are taken again")
            return
        if self.restarted:
            if self._runs():
                return
            gone = "stopped"
        else:
            exited = self.broker.exited()
            if exited is None:
                return
            gone = f"exited with {exited}"
        self.down = True
        self._say(
            f"kafka {gone} (see {self.broker.log_file}); webhooks wait for it, answered 503 "
            "once one has waited KAFKA_STALL_SECONDS, until it runs again (talkstream kafka "
            "start)"
        )

    def _runs(self) -> bool:
        try:
            return self.broker.status().running
        except KafkaLauncherError:  # started again with other settings: not this run's broker
            return False

    @staticmethod
    def _say(line: str) -> None:
        print(f"talkstream dev: {line}", file=sys.stderr, flush=True)


def _run(
    settings: Settings,
    broker: EmbeddedKafka,
    kafka: list[Address],
    *,
    openai_port: int,
    talkable_port: int,
) -> int:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started_kafka = not broker.status().running
    try:
        # what `talkstream kafka start` says: seconds of silence otherwise (a JVM starting,
        # a KRaft quorum forming), which looked like a hang
        status = broker.start(on_wait=_say)
    except PortUnavailable as exc:  # taken since it was checked
        print(
            f"talkstream dev: {exc} (set by {what_sets_listener(kafka, exc)})",
            file=sys.stderr,
        )
        return 1
    except KafkaLauncherError as exc:
        print(f"talkstream dev: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(ensure_topics(settings))
    except TalkstreamError as exc:  # the topics' partitions not this run's, say
        print(f"talkstream dev: {exc}", file=sys.stderr)
        if started_kafka:
            broker.stop()
        return 1

    env = dict(os.environ)
    if settings.secret_keys is None:
        env["TALKSTREAM_SECRET_KEYS"] = dev_key()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    copiers: list[threading.Thread] = []  # each child's output to its log
    lines = [f"kafka      {status.bootstrap}   (log {status.log_file})"]
    if stands_in(settings, "openai_base_url"):
        procs["openai"] = _spawn(
            "openai-standin", ["standin", "openai", "--port", str(openai_port)], env, logs, copiers
        )
        env["TALKSTREAM_OPENAI_BASE_URL"] = f"http://127.0.0.1:{openai_port}/v1"
        lines.append(f"openai     http://127.0.0.1:{openai_port}/v1   (stand-in)")
    else:
        lines.append(f"openai     {settings.openai_base_url}")
    if stands_in(settings, "talkable_base_url"):
        procs["talkable"] = _spawn(
            "talkable-standin",
            ["standin", "talkable", "--port", str(talkable_port)],
            env,
            logs,
            copiers,
        )
        env["TALKSTREAM_TALKABLE_BASE_URL"] = f"http://127.0.0.1:{talkable_port}/api/v2"
        lines.append(
            f"talkable   http://127.0.0.1:{talkable_port}/api/v2   "
            f"(stand-in; recorded calls: http://127.0.0.1:{talkable_port}/_events)"
        )
    else:
        lines.append(f"talkable   {settings.talkable_base_url}")
    procs["worker"] = _spawn("worker", ["worker"], env, logs, copiers)
    procs["ingress"] = _spawn("ingress", ["ingress"], env, logs, copiers)
    port = settings.ingress_port
    ingress = f"http://{url_host(settings.ingress_host)}:{port}"
    lines.append(f"ingress    {ingress}/chat-gpt/generate")
    # the operator console, with a token of this run's unless one is set
    if settings.console_token is None:
        env["TALKSTREAM_CONSOLE_TOKEN"] = secrets.token_urlsafe(24)
    console = f"http://{url_host(settings.console_host)}:{settings.console_port}"
    pacing = own_worker_url(settings)
    if "console_worker_urls" not in settings.model_fields_set and pacing is not None:
        env["TALKSTREAM_CONSOLE_WORKER_URLS"] = pacing
    procs["console"] = _spawn("console", ["console"], env, logs, copiers)
    lines.append(
        f"console    {console}/   (token: {env['TALKSTREAM_CONSOLE_TOKEN']})"
        if settings.console_token is None
        else f"console    {console}/   (token: TALKSTREAM_CONSOLE_TOKEN)"
    )
    if settings.worker_http_port:  # (port 0, any free port, cannot be named here)
        worker_http = f"http://{url_host(settings.worker_http_host)}"
        projector = (
            f"; its projector's: {worker_http}:{settings.projector_http_port}/metrics"
            if settings.projector == "process" and settings.projector_http_port
            else ""
        )
        executors = (
            f"; its executors': {worker_http}:{settings.executors_http_port}/metrics"
            if settings.executors == "process" and settings.executors_http_port
            else ""
        )
        lines.append(
            f"worker     {worker_http}:{settings.worker_http_port}/metrics   "
            f"(and /readyz{projector}{executors})"
        )
    database, look = database_hints(settings.resolved_database_url)
    lines.append(f"database   {database}")
    lines.append(f"logs       {logs}/")

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C, and SIGINT to its process group, stop it even when started in the background of
    # a script, which starts it with SIGINT ignored (Python then installs no handler of its own)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        # the ingress ready: a webhook sent now is written, not answered 503
        if not _wait_http(f"{ingress}/readyz", procs["ingress"], 60):
            print(
                f"talkstream dev: the ingress did not become ready; see {logs}/ingress.log",
                file=sys.stderr,
            )
            return 1
        if not _wait_http(f"{console}/login", procs["console"], 30):
            print(
                f"talkstream dev: console did not come up; see {logs}/console.log", file=sys.stderr
            )
            return 1
        # the worker ready (partitions assigned, table recovered): a first webhook is decided
        # at once, not a second later (its port 0, any free port, cannot be asked here)
        worker = f"http://{url_host(settings.worker_http_host)}:{settings.worker_http_port}/readyz"
        if settings.worker_http_port and not _wait_http(worker, procs["worker"], 120):
            print(
                f"talkstream dev: the worker did not become ready; see {logs}/worker.log",
                file=sys.stderr,
            )
            return 1
        # the console ready: its pages read the projection (made by the worker's projector
        # once its group has its partitions), not "no projection yet" on a first look
        ready = console_readyz(settings, console)
        if ready is not None and not _wait_http(ready, procs["console"], 60):
            print(
                f"talkstream dev: the console did not become ready ({_status_of(ready)}); "
                f"see {logs}/console.log and {logs}/worker.log",
                file=sys.stderr,
            )
            return 1
        print("talkstream dev is running:\n  " + "\n  ".join(lines))
        print("\nTry it:\n  " + curl_example(url_host(settings.ingress_host, to_reach=True), port))
        audit = f"{talkstream_command()} audit --request-id <id>"
        print(f"\nthen: {audit}{f'   or   {look}' if look else ''}")
        print("\nCtrl-C stops everything.", flush=True)
        code = watch(procs, broker if started_kafka else None, logs)
    except KeyboardInterrupt:
        pass  # Ctrl-C, or a child that died (reported above): stop everything
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for copier in copiers:  # the children's last lines (how they stopped)
            copier.join(timeout=5)
        if started_kafka:
            broker.stop()
        print("talkstream dev: stopped", flush=True)
    return code
