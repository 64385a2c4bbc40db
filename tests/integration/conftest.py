"""The integration tier: a real Kafka broker, real HTTP servers, a real SQLite file.

One embedded broker serves the session (Kafka ``TALKSTREAM_KAFKA_VERSION``, default 4.4.0);
each module gets its own app id (so its own topics and consumer group), stand-ins, worker and
ingress, all as separate processes started exactly as ``talkstream`` starts them. Nothing here
skips: without Java or Maven the broker fixture fails with the launcher's message.

``brokers/`` holds the scenarios that bring their own brokers (a 3-node cluster, a secured
broker, the other Kafka version). The costliest modules run first
(:func:`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from streams.dev.kafka import DEFAULT_KAFKA_VERSION, EmbeddedKafka
from streams.dev.kafka_cluster import KafkaCluster
from streams.projection.store import ProjectionStore
from streams.projection.tables import ProjectedOffsetRow, RequestRow
from streams.secrets import generate_key
from streams.settings import Settings
from tests.support import free_port, log_excerpt, wait_until

pytestmark = pytest.mark.integration


# the modules that take longest, longest first (seconds of their tests, summed, on a 2-core
# host: 1092 for test_crash.py, then 896, 455, 342, 318, ... down to about 60 for the last);
# the rest take less, any order. Measured again when a module's scenarios change much.
COSTLIEST_FIRST = (
    "test_crash.py",
    "test_faults.py",
    "test_upstream_limits.py",
    "test_projector_group.py",
    "brokers/test_secured.py",
    "test_worker_readiness.py",
    "test_upstream_answers.py",
    "test_projector.py",
    "test_broker_down.py",
    "brokers/test_producer_outage.py",
    "test_truthful_edges.py",
    "test_bench_smoke.py",
    "test_executors_process.py",
    "test_changelog_fetching.py",
    "test_replay.py",
    "test_worker_stop.py",
    "test_partitions_added.py",
    "brokers/test_replication.py",
    "brokers/test_ingress_outage.py",
    "brokers/test_cluster_cli.py",
    "test_producer_linger.py",
    "test_console_narrow.py",
    "test_dev.py",
    "test_console_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest modules first (:data:`COSTLIEST_FIRST`), the rest after them in the order
    collected. ``make test`` runs the tier on three pytest-xdist processes with ``--dist
    loadfile --no-loadscope-reorder``: each module runs whole on one of them, its ``system``
    started once and its tests in order, and each process takes the next module in this order
    when it is done with its own. Longest first, the last modules to end are short ones, and
    the three processes end close together; ordered by their count of tests (xdist's default)
    the slowest modules (``brokers/``: few tests, a broker or three each) were taken last, and
    one process ran them while the others had nothing left."""
    here = Path(__file__).parent
    rank = {here / name: n for n, name in enumerate(COSTLIEST_FIRST)}
    if gone := [name for name in COSTLIEST_FIRST if not (here / name).is_file()]:
        raise pytest.UsageError(f"COSTLIEST_FIRST names modules that are not there: {gone}")
    items.sort(key=lambda item: rank.get(item.path, len(rank)))


def session_kafka_version() -> str:
    return os.environ.get("TALKSTREAM_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp("broker"),
        port=free_port(),
        controller_port=free_port(),
        version=session_kafka_version(),
    )
    broker.start(timeout=120)
    yield broker
    broker.stop()


def _started_broker(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[EmbeddedKafka]:
    """A broker started in a folder of its own, stopped when its fixture ends."""
    broker = EmbeddedKafka(
        tmp_path_factory.mktemp(name), port=free_port(), controller_port=free_port()
    )
    broker.start(timeout=120)
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A broker of the test's own, which it may stop, kill and start again."""
    yield from _started_broker(tmp_path_factory, "own-broker")


@pytest.fixture(scope="module")
def _module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    yield from _started_broker(tmp_path_factory, "module-broker")


@pytest.fixture
def module_broker(_module_broker: EmbeddedKafka) -> EmbeddedKafka:
    """A broker of the module's own, which each of its tests may stop, kill, freeze and start
    again, as ``own_broker``: started once for the module, not once a test (a start takes 5 to
    15 s), and found running by each test (started again if the one before left it stopped).
    Each test's topics and groups are its own (names of its own, as on the session's broker)."""
    _module_broker.start(timeout=120)  # (nothing to do when it runs)
    return _module_broker


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() once answered (or given up on)
    body: dict[str, Any]
    status: int | None  # None: no answer (a timeout, a connection closed unanswered)
    request_id: str | None  # the answer's


class Traffic:
    """A steady trickle of webhooks to ``system`` from ``clients`` threads (each posts, waits
    for its answer, pauses 50 ms) until the block ends or :meth:`stop`; every outcome is in
    ``answers``, in the order answered. ``body(client, i)``: the ``i``-th webhook of a client."""

    def __init__(
        self,
        system: System,
        body: Callable[[int, int], dict[str, Any]],
        *,
        clients: int = 2,
        timeout: float = 20,
    ) -> None:
        self.system, self.body, self.timeout = system, body, timeout
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(n,)) for n in range(clients)]

    def _post(self, client: int) -> None:
        i = 0
        while not self._stop.is_set():
            body = self.body(client, i)
            i += 1
            try:
                status, answer = self.system.post(body, timeout=self.timeout)
            except OSError:  # TimeoutError too: the client knows nothing, and was told nothing
                status, answer = None, None
            rid = answer.get("request_id") if isinstance(answer, dict) else None
            self.answers.append(Answer(time.monotonic(), body, status, rid))
            self._stop.wait(0.05)

    def count(self, status: int | None, since: int = 0) -> int:
        return sum(a.status == status for a in self.answers[since:])

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout=self.timeout + 30)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read(), exc.code
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


# how long a worker's projector may take to make its schema, from the worker's start: the
# worker starts it as a child process, which makes sure of the topics and its group's
# coordinator, starts its producer and consumer, and migrates its database once its group has
# given it partitions. On a host at load 15 a child made the file 61 s after the ingress was
# ready (then at its start, before joining: the bound was 60 s); as long as a worker may take to
# be ready (``System.wait_ready``)
PROJECTOR_START_SECONDS = 120


def _kind_of(value: bytes) -> str:
    """A record's type or kind, as its JSON names it ("?" when it names neither), and the
    attempt it is of, when it names one ("generate_text #2")."""
    try:
        fields = json.loads(value)
    except ValueError:
        return "?"
    if not isinstance(fields, dict):
        return "?"
    kind = str(fields.get("type") or fields.get("kind", "?"))
    return kind if fields.get("attempt") is None else f"{kind} #{fields['attempt']}"


def projection_made(path: Path) -> bool:
    """Whether a projector has migrated the SQLite file at ``path`` to this version's schema
    (it does once its group has given it partitions: after the worker started its child, the
    child its producer and its consumer, and the group took it); never made or migrated here."""
    if not path.exists():  # (opening a file that is not there would make it)
        return False
    reader = ProjectionStore.from_url(f"sqlite:///{path}", migrate_schema=False)
    try:
        return reader.is_current()
    except DBAPIError:  # the projector is making it: not yet
        return False
    finally:
        reader.close()


class System:
    """One deployment: stand-ins, worker(s) and ingress as processes, on the session broker
    (or a cluster; ``overrides`` become ``TALKSTREAM_<NAME>`` variables)."""

    def __init__(self, kafka: EmbeddedKafka | KafkaCluster, root: Path, **overrides: str) -> None:
        self.kafka = kafka
        self.root = root
        self.app_id = f"t{uuid.uuid4().hex[:10]}"
        self.openai_port, self.talkable_port, self.ingress_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        self.database = root / "projection.sqlite3"
        self.env = {
            **os.environ,
            "TALKSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "TALKSTREAM_APP_ID": self.app_id,
            "TALKSTREAM_PARTITIONS": "4",
            "TALKSTREAM_DATA_DIR": str(root),
            "TALKSTREAM_DATABASE_URL": f"sqlite:///{self.database}",
            "TALKSTREAM_SECRET_KEYS": generate_key(),
            "TALKSTREAM_OPENAI_BASE_URL": f"http://127.0.0.1:{self.openai_port}/v1",
            "TALKSTREAM_TALKABLE_BASE_URL": f"http://127.0.0.1:{self.talkable_port}/api/v2",
            "TALKSTREAM_INGRESS_PORT": str(self.ingress_port),
            "TALKSTREAM_RETRY_BASE_SECONDS": "0.05",
            "TALKSTREAM_DEADLINE_CHECK_INTERVAL_SECONDS": "0.5",
            **{f"TALKSTREAM_{k.upper()}": v for k, v in overrides.items()},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.worker_ports: dict[str, int] = {}
        self.executors_ports: dict[str, int] = {}  # each worker's executors child's, if any
        self._projection: ProjectionStore | None = None

    # --- processes ----------------------------------------------------------------------------

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "streams", *args],
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    def start(self, *, ready: bool = True) -> System:
        """Every process started; returned once the ingress is ready (``ready=False``: once it
        answers, its producer not started yet)."""
        self.spawn("openai", "standin", "openai", "--port", str(self.openai_port))
        self.spawn("talkable", "standin", "talkable", "--port", str(self.talkable_port))
        self.start_worker()
        self.spawn("ingress", "ingress")
        for port in (self.openai_port, self.talkable_port):
            wait_until(
                lambda p=port: self._up(f"http://127.0.0.1:{p}/_stats"),
                30,
                what=f"stand-in on {port}",
            )
        # ready, not only up, as a load balancer would: its producer knows a leader for every
        # partition of [requests]. (A webhook sent before that once waited in aiokafka for its
        # request timeout, 10 s, and those sent meanwhile were answered 503; no longer:
        # test_producer_metadata.py. A test of something else need not race the start.)
        probe = "readyz" if ready else "healthz"
        wait_until(lambda: self._up(f"{self.ingress}/{probe}"), 60, what=f"ingress {probe}")
        return self

    @property
    def executors_mode(self) -> str:
        """Where the workers run their executors (``TALKSTREAM_EXECUTORS``: ``process``, the
        default, a child of each worker with its own HTTP server, or ``worker``)."""
        return self.env.get("TALKSTREAM_EXECUTORS", Settings.model_fields["executors"].default)

    def start_worker(self, name: str = "worker") -> None:
        self.worker_ports[name] = free_port()
        # its executors child's, when they run so: kept, to read their /metrics and /readyz
        self.executors_ports[name] = int(
            self.env.get("TALKSTREAM_EXECUTORS_HTTP_PORT") or free_port()
        )
        env = {
            **self.env,
            "TALKSTREAM_WORKER_NAME": name,
            "TALKSTREAM_WORKER_HTTP_PORT": str(self.worker_ports[name]),
            # its projector child's (by default), unless the test chose one
            "TALKSTREAM_PROJECTOR_HTTP_PORT": self.env.get("TALKSTREAM_PROJECTOR_HTTP_PORT")
            or str(free_port()),
            "TALKSTREAM_EXECUTORS_HTTP_PORT": str(self.executors_ports[name]),
        }
        self.spawn(name, "worker", env=env)

    def worker_url(self, name: str = "worker") -> str:
        return f"http://127.0.0.1:{self.worker_ports[name]}"

    def executors_url(self, name: str = "worker") -> str:
        """Where worker ``name``'s executors answer (``/metrics``: the upstream series, the
        lag of ``[generate]`` and ``[completions]``; ``/readyz``): the worker's own server,
        or its executors child's with ``TALKSTREAM_EXECUTORS=process``."""
        if self.executors_mode == "process":
            return f"http://127.0.0.1:{self.executors_ports[name]}"
        return self.worker_url(name)

    def executors_metrics(self, name: str = "worker") -> str:
        """The ``/metrics`` page of worker ``name``'s executors (:meth:`executors_url`)."""
        status, text = http("GET", f"{self.executors_url(name)}/metrics")
        assert status == 200, (status, text)
        return str(text)

    def child_pid(self, command: str, name: str = "worker") -> int | None:
        """The pid of worker ``name``'s child running ``talkstream <command>`` (``executors``,
        ``projector``), None while it has none."""
        worker = self.procs[name].pid
        found = []
        for task in Path(f"/proc/{worker}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in (task / "children").read_text().split()]
        for pid in found:
            with contextlib.suppress(OSError):  # ended meanwhile
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2:] == [
                    command.encode(),
                    b"",
                ]:
                    return pid
        return None

    def wait_ready(self, name: str = "worker", timeout: float = 120) -> None:
        """Until the worker's ``/readyz`` says ready (a broker answers it, partitions assigned,
        table recovered)."""
        wait_until(lambda: self._up(f"{self.worker_url(name)}/readyz"), timeout, what=name)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def kill_with_executors(self, name: str) -> None:
        """Worker ``name`` killed (SIGKILL) with its executors, as a host lost or a container's
        OOM kill ends both: what they were calling and had queued is lost, for the next run
        (or the partition's next owner) to tell. With ``TALKSTREAM_EXECUTORS=process`` its
        executors child is killed too, the worker frozen first so that it starts no other:
        killed alone, the worker has its child stopped by the kernel (SIGTERM, a stop that
        ends or hands back its work and tells the ledger itself: README, ``EXECUTORS``)."""
        if self.executors_mode != "process":
            self.kill(name)
            return
        child = self.child_pid("executors", name)
        assert child is not None, f"{name} has no executors child"
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        os.kill(child, signal.SIGKILL)
        self.kill(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._projection is not None:
            self._projection.close()

    def _up(self, url: str) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
        try:
            return http("GET", url, timeout=2)[0] == 200
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return log_excerpt(path.read_text(errors="replace"), 4000) if path.exists() else ""

    # --- talking to it ------------------------------------------------------------------------

    @property
    def ingress(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def post(self, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return http("POST", f"{self.ingress}/chat-gpt/generate", body, **kw)

    def openai(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, f"http://127.0.0.1:{self.openai_port}{path}", body)[1]

    def talkable(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, f"http://127.0.0.1:{self.talkable_port}{path}", body)[1]

    def talkstream(self, *args: str) -> str:
        """Run a ``talkstream`` command against this deployment; its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"talkstream {' '.join(args)}: {done.stderr}"
        return done.stdout

    @property
    def projection(self) -> ProjectionStore:
        """The projection the worker's projector writes, read once its projector has made its
        schema there. The test neither makes nor migrates it (a refused projector makes no
        file: what tests of it check)."""
        if self._projection is None:
            wait_until(self._projection_made, PROJECTOR_START_SECONDS, what="the projection")
            self._projection = ProjectionStore.from_url(
                f"sqlite:///{self.database}", migrate_schema=False
            )
        return self._projection

    def _projection_made(self) -> bool:
        return projection_made(self.database)

    def terminal_of(self, request_ids: list[str]) -> dict[str, bool]:
        """Whether each of these requests the projection has is terminal (of an id's latest),
        in one query per 500 ids: read a row at a time, a poll of 500 requests took the test
        process 0.2 s of CPU, every 0.2 s, from the deployment it waits for on a 2-core host."""
        found: dict[str, bool] = {}
        with self.projection.engine.connect() as connection:
            for start in range(0, len(request_ids), 500):
                chunk = request_ids[start : start + 500]
                query = select(RequestRow.request_id, RequestRow.terminal)
                query = query.where(RequestRow.request_id.in_(chunk))
                found.update(connection.execute(query.order_by(RequestRow.occurrence)).all())
        return found

    def wait_terminal(self, request_ids: list[str], timeout: float = 90) -> dict[str, RequestRow]:
        """Until every one of ``request_ids`` is terminal in the projection, ``timeout`` seconds
        at most once the projection is there: the projector's start (up to
        ``PROJECTOR_START_SECONDS``, from the worker's) is not the requests'. (Its first read
        waited for it inside the requests' time: a webhook posted as the ingress was ready, on
        a host at load 18, found the projection made 44 s later and failed its 30 s.)"""

        def done() -> dict[str, RequestRow] | None:
            terminal = self.terminal_of(request_ids)
            if not all(terminal.get(rid) for rid in request_ids):
                return None  # (the rows read whole only once every one is terminal)
            rows = {rid: self.projection.request(rid) for rid in request_ids}
            if all(row is not None and row.terminal for row in rows.values()):
                return rows  # type: ignore[return-value]
            return None

        try:
            self.projection  # noqa: B018 (made, or waited for)
            return wait_until(done, timeout, 0.2, what=f"{len(request_ids)} terminal requests")
        except AssertionError:
            self.explain_unfinished(request_ids)
            raise

    def _in_the_log(self, request_ids: list[str]) -> str:
        """Where a few unfinished requests are in the log, and how far each group read: which
        topic's records name each (a request never decided is in [requests] alone), each
        partition's end beside its group's commit and what the projection has read to."""
        bootstrap = self.env["TALKSTREAM_KAFKA_BOOTSTRAP"]
        names = ("requests", "generate", "completions", "lifecycle")
        topics = {name: f"{self.app_id}-{name}" for name in names}
        found: dict[str, list[str]] = {rid: [] for rid in request_ids}
        for name, topic in topics.items():
            for partition, offset, _, value in read_topic(bootstrap, topic):
                for rid in request_ids:
                    if value and rid.encode() in value:
                        found[rid].append(f"{name}[{partition}]@{offset} {_kind_of(value)}")
        projected: dict[int, int] = {}
        if self._projection_made():
            with self.projection.engine.connect() as connection:
                projected = dict(
                    connection.execute(
                        select(ProjectedOffsetRow.partition, ProjectedOffsetRow.next_offset).where(
                            ProjectedOffsetRow.topic == topics["lifecycle"]
                        )
                    ).all()
                )
        lines = [f"{rid} in the log: {', '.join(at) or 'nowhere'}" for rid, at in found.items()]
        for name, group in (("requests", self.app_id), ("lifecycle", f"{self.app_id}-projector")):
            committed = group_commits(bootstrap, group)  # (each group commits that topic only)
            lines.append(
                f"{name} end/committed by {group}"
                + (" /projected" if name == "lifecycle" else "")
                + ": "
                + " ".join(
                    f"[{partition}] {end}/{committed.get(partition, ('-',))[0]}"
                    + (f"/{projected.get(partition, '-')}" if name == "lifecycle" else "")
                    for partition, end in sorted(topic_ends(bootstrap, topics[name]).items())
                )
            )
        return "\n".join(lines)

    def trace(self, request_ids: list[str]) -> str:
        """For a failed assertion's message: where each of ``request_ids`` is in the log (its
        records, :meth:`_in_the_log`) and every line of every process's log naming it, and
        the stand-in's calls of it: what a test that finds a request other than it expects
        (an attempt too few, a call too many) needs to say why, when it cannot run again."""
        lines = [self._in_the_log(request_ids)]
        for path in sorted(self.root.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()
            named = [line for line in text if any(rid in line for rid in request_ids)]
            lines += [f"----- {path.name}: {len(named)} lines naming them -----", *named[-40:]]
        return "\n".join(lines)

    def explain_unfinished(self, request_ids: list[str]) -> None:
        """What a failed wait leaves behind: the requests not terminal (by state, a few of
        them) and the end of every process's log, the dead ones' too."""
        if self._projection is None and not self._projection_made():
            print(f"no projection yet: {self.database} not made by the projector")
            rows: dict[str, RequestRow | None] = dict.fromkeys(request_ids)
        else:
            rows = {rid: self.projection.request(rid) for rid in request_ids}
        stuck = {rid: row and row.state for rid, row in rows.items() if not (row and row.terminal)}
        print(f"not terminal: {len(stuck)} of {len(rows)}, by state {Counter(stuck.values())}")
        print("for instance:", sorted(stuck.items())[:5])
        # in a thread of its own: bounded (a broker the test hung would hold its reads), and
        # apart from a test's own event loop, which would refuse the reads' asyncio.run
        pool = ThreadPoolExecutor(1)
        try:
            print(pool.submit(self._in_the_log, sorted(stuck)[:3]).result(timeout=30))
        except Exception as exc:  # a broker stopped by the test, for one: the logs still print
            print(f"(the log not read: {exc!r})")
        finally:
            pool.shutdown(wait=False)
        for path in sorted(self.root.glob("*.log")):
            if path.stem not in ("openai", "talkable"):
                print(f"----- {path.name} (its first error, if any, and its end) -----")
                print(self.log(path.stem))


@pytest.fixture(scope="module")
def system(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    deployment = System(kafka, tmp_path_factory.mktemp("system")).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def _module_system(
    kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[System, Any, Any]]:
    deployment = System(kafka, tmp_path_factory.mktemp("module-system")).start()
    # the stand-ins' settings as they start: what each test finds them set to
    defaults = deployment.openai("GET", "/_control"), deployment.talkable("GET", "/_control")
    yield deployment, *defaults
    deployment.stop()


@pytest.fixture
def module_system(_module_system: tuple[System, Any, Any]) -> System:
    """The module's one deployment on default settings, as ``make_system()`` starts one, for
    its tests that only send webhooks and read what became of them: started once for the
    module, not once a test (a start and a stop take 10 to 30 s). Each test finds its
    stand-ins as new (their settings back to their defaults, no call or event recorded), so
    what it sets and counts there is its own; what the worker learned of earlier tests' keys,
    sites and models stays, so each test uses people, keys, sites and models of its own. A
    test that stops, kills or adds a process, or counts what the whole deployment holds (a
    topic's records, its dead letters, every target's metrics), starts its own."""
    system, openai, talkable = _module_system
    for name, proc in system.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{system.log(name)}"
    system.openai("POST", "/_control", openai)
    system.openai("DELETE", "/_calls")
    system.talkable("POST", "/_control", talkable)
    system.talkable("DELETE", "/_calls")
    system.talkable("DELETE", "/_events")
    return system


def samples(metrics: str, name: str) -> list[Any]:
    """The samples named ``name`` (a counter's ``..._total``, a gauge's own name) on a
    ``/metrics`` page, each with its ``labels`` and ``value``."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        sample
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    ]


def consumer_lags(metrics: str, topic: str) -> dict[str, float]:
    """``talkstream_consumer_lag`` of ``topic`` by partition, from a ``/metrics`` page."""
    return {
        sample.labels["partition"]: sample.value
        for sample in samples(metrics, "talkstream_consumer_lag")
        if sample.labels.get("topic") == topic
    }


def described_group(bootstrap: str, group: str) -> tuple[str, list[Any]]:
    """Consumer group ``group`` as its coordinator describes it: its state, and its members
    (member id, client id, host, metadata, assignment; the assignments said of a stable
    group only)."""

    async def ask() -> tuple[str, list[Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        described = response.groups[0]
        return str(described[2]), list(described[5])

    return asyncio.run(ask())


def now_s() -> int:
    return int(time.time())


@pytest.fixture
def make_system(kafka: EmbeddedKafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start a deployment with settings overrides (``generation_deadline_seconds="3"``…)."""
    started: list[System] = []

    def make(**overrides: str) -> System:
        deployment = System(kafka, tmp_path_factory.mktemp("system"), **overrides)
        started.append(deployment)
        return deployment.start()

    yield make
    for deployment in started:
        deployment.stop()


def read_topic(
    bootstrap: str, topic: str, options: dict[str, Any] | None = None
) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record of ``topic`` up to its current end: (partition, offset, key, value).
    ``options``: aiokafka connection options (TLS/SASL) besides the bootstrap."""
    options = {**(options or {}), "bootstrap_servers": bootstrap}
    import asyncio
    import contextlib

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> list[tuple[int, int, bytes | None, bytes]]:
        parts = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic, options)]
        consumer = AIOKafkaConsumer(**options, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            records = []

            async def behind() -> bool:
                return any([await consumer.position(tp) < end for tp, end in ends.items()])

            while await behind():
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, msgs in batch.items():
                    records += [
                        (tp.partition, m.offset, m.key, m.value)
                        for m in msgs
                        if m.offset < ends[tp]
                    ]
            return records
        finally:
            # aiokafka 0.14's group-less consumer re-raises its own cancelled task on stop
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.stop()

    return asyncio.run(read())


async def partitions_of(
    bootstrap: str, topic: str, options: dict[str, Any] | None = None
) -> list[int]:
    """The topic's partitions, from the broker (fails if the topic does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**{**(options or {}), "bootstrap_servers": bootstrap})
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0, f"topic {topic} missing: {described}"
    return sorted(p["partition"] for p in described["partitions"])


def topic_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic`` that holds a record (the next written)."""
    import asyncio
    import contextlib

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> dict[int, int]:
        parts = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts)
        finally:
            with contextlib.suppress(asyncio.CancelledError):  # (as in read_topic)
                await consumer.stop()
        return {tp.partition: end for tp, end in ends.items() if end}

    return asyncio.run(read())


def group_commits(bootstrap: str, group: str) -> dict[int, tuple[int, str]]:
    """A consumer group's committed offset of each partition with its metadata (no member
    joins the group to read them)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def read() -> dict[int, tuple[int, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: (o.offset, o.metadata or "") for tp, o in found.items()}

    return asyncio.run(read())


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """A topic of our own on the test broker (it creates none by itself), one replica."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()

    asyncio.run(send())
