"""The docs are tested: README's quick start, commands and settings, and topology.md's topic,
agent and table lists, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from cryptography.fernet import Fernet

from streams.app import build
from streams.cli import main
from streams.settings import Settings
from streams.topics import CATALOGUE, LEDGER_TABLE

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TOPOLOGY = (ROOT / "topology.md").read_text()


def section(text: str, heading: str) -> str:
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows[1:]  # without the header


def all_commands(group: click.Group, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            names |= {f"{full} {sub}" for sub in command.commands}
        else:
            names.add(full)
    return names


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("docs"),
        secret_keys=Fernet.generate_key().decode(),
        table_store="memory://",
        executors="worker",  # built here, to be named, whatever TALKSTREAM_EXECUTORS says
    )
    return build(settings)


def test_quick_start_is_exactly_two_commands_that_exist() -> None:
    quick = section(README, "Quick start")
    block = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line]
    assert commands == ["make dev", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dev:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def documented_commands() -> set[str]:
    groups = {name for name, c in main.commands.items() if isinstance(c, click.Group)}
    documented = set()
    for row in table_rows(section(README, "Commands")):
        for snippet in re.findall(r"`talkstream ([^`]+)`", row[0]):
            words = snippet.replace("\\|", "|").split()
            if words[0] in groups and len(words) > 1 and not words[1].startswith("-"):
                documented |= {f"{words[0]} {sub}" for sub in words[1].split("|")}
            else:
                documented.add(words[0])
    return documented


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    documented, actual = documented_commands(), all_commands(main)
    assert documented - actual == set(), "README names commands that do not exist"
    assert actual - documented == set(), "commands missing from README's Commands table"


def _read_from_environ() -> set[str]:
    """The TALKSTREAM_ variables code reads straight from the environment, not through
    Settings (the embedded broker's launcher, which runs without the settings)."""
    return {
        name
        for path in (ROOT / "streams").rglob("*.py")
        for name in re.findall(r"environ\.get\(\"TALKSTREAM_([A-Z_]+)\"", path.read_text())
    }


def test_every_documented_setting_exists() -> None:
    fields = set(Settings.model_fields) | {name.lower() for name in _read_from_environ()}
    for row in table_rows(section(README, "Configuration")):
        for name in re.findall(r"`([A-Z_]+)`", row[0]):
            assert name.lower() in fields, f"README documents TALKSTREAM_{name}, unknown"


def test_every_variable_read_outside_the_settings_is_documented() -> None:
    """TALKSTREAM_KAFKA_JARS, read by the embedded broker's launcher, was in no table."""
    documented = {
        name
        for row in table_rows(section(README, "Configuration"))
        for name in re.findall(r"`([A-Z_]+)`", row[0])
    }
    assert "KAFKA_JARS" in _read_from_environ()
    assert _read_from_environ() - documented == set()


def test_every_setting_is_documented() -> None:
    """KAFKA_CONTROLLER_PORT (an address ``make dev`` takes) and DEADLINE_CHECK_INTERVAL_SECONDS
    were settings the table did not name: someone moving every port of a second ``make dev``
    off the defaults could not know the controller's was one."""
    documented = {
        name.lower()
        for row in table_rows(section(README, "Configuration"))
        for name in re.findall(r"`([A-Z_]+)`", row[0])
    }
    assert set(Settings.model_fields) - documented == set()


def test_make_test_runs_every_tier_on_its_processes() -> None:
    """The unit and functional tiers are CPU-bound: pytest-xdist runs them on both cores. The
    integration tier mostly waits: three processes, each module whole and in order on one of
    them (``--dist loadfile``: a module's tests share its ``system``), the costliest modules
    first (``--no-loadscope-reorder``: in the order the tier's conftest sorts them, not by
    their count of tests). With PYTEST_ARGS: one run, as given."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n|[a-z].*\n)+)", makefile, re.M)
    assert recipe
    runs = [line.strip() for line in recipe.group(1).splitlines() if "pytest" in line]
    assert runs == [
        ".venv/bin/python -m pytest tests/unit tests/functional -n 2",
        ".venv/bin/python -m pytest tests/integration -n 3 --dist loadfile --no-loadscope-reorder",
        ".venv/bin/python -m pytest $(PYTEST_ARGS)",
    ]


def test_make_dev_passes_options_to_talkstream_dev() -> None:
    """The stand-ins' ports are options of ``talkstream dev``, which README names when they are
    taken; ``make dev`` must be able to pass them."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^dev:.*\n\t\.venv/bin/talkstream dev \$\(DEV_ARGS\)$", makefile, re.M)
    assert "make dev DEV_ARGS='--openai-port" in README


def test_topology_topics_match_the_catalogue() -> None:
    settings = Settings(app_id="talkstream")
    specs = {spec.full_name(settings).replace("talkstream-", "<app>-"): spec for spec in CATALOGUE}
    rows = table_rows(section(TOPOLOGY, "Topics"))
    documented = {row[0].strip("`"): row for row in rows}
    assert set(documented) == set(specs)
    for name, row in documented.items():
        spec = specs[name]
        assert row[1] == spec.key, f"{name}: key"
        assert re.findall(r"\b[A-Z][A-Za-z]+\b", row[2])[: len(spec.value_names())] == (
            spec.value_names()
        ), f"{name}: values"
        assert row[5].startswith(spec.retention), f"{name}: retention"


def test_topology_says_which_topics_values_carry_no_schema_version() -> None:
    """topology.md said every value carries ``schema_version``; the ledger table's changelog
    holds ``PersonState`` entries, which carry none (and ASCII offsets). A reader that
    refuses a value without a version, as the sentence invites, refused every entry."""
    from typing import get_args, get_origin

    settings = Settings(app_id="talkstream")
    text = " ".join(section(TOPOLOGY, "Topics").split())
    said = text.split("Values are JSON", 1)[1].split("The JSON Schema of each topic", 1)[0]
    for spec in CATALOGUE:
        union = get_args(get_args(spec.values)[0]) if get_origin(spec.values) else ()
        models = union or (spec.values,)
        unversioned = [m.__name__ for m in models if "schema_version" not in m.model_fields]
        if unversioned:
            name = spec.full_name(settings).replace("talkstream-", "<app>-")
            assert f"`{name}`" in said and all(m in said for m in unversioned), name


def test_topology_agents_and_tables_match_the_app(runtime) -> None:
    rows = table_rows(section(TOPOLOGY, "Agents"))
    agents = {row[0] for row in rows if "(" not in row[0]}
    assert agents == set(runtime.app.agents)
    executors = {row[0].removesuffix(" (executor)") for row in rows if "(executor)" in row[0]}
    assert executors == {executor.config.name for executor in runtime.executors}
    assert "deadlines (timer)" in {row[0] for row in rows}
    assert "projector (own consumer)" in {row[0] for row in rows}
    assert runtime.projector is None  # TALKSTREAM_PROJECTOR=process, the default: a child
    tables = {row[0].strip("`") for row in table_rows(section(TOPOLOGY, "Tables"))}
    assert tables == set(runtime.app.tables) == {LEDGER_TABLE}


@pytest.mark.parametrize(
    ("where", "in_worker"), [("worker", True), ("process", False), ("off", False)]
)
def test_the_projector_runs_in_the_worker_only_when_told(tmp_path: Path, where, in_worker) -> None:
    settings = Settings(
        data_dir=tmp_path,
        secret_keys=Fernet.generate_key().decode(),
        table_store="memory://",
        projector=where,
    )
    assert (build(settings).projector is not None) is in_worker


def _as_documented(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_documented_default_is_the_settings_default() -> None:
    """The table's names were checked against the settings, not its defaults: a default changed
    in streams/settings.py would have left README promising the old one."""
    checked = 0
    for row in table_rows(section(README, "Configuration")):
        names = re.findall(r"`([A-Z_]+)`", row[0])
        defaults = row[1].split(" / ")
        if len(defaults) != len(names) or not all(re.fullmatch(r"`[^`]+`", d) for d in defaults):
            continue  # "none", a rule ("RF - 1, ..."), a path built from other settings
        for name, default in zip(names, defaults, strict=True):
            if name.lower() not in Settings.model_fields:
                continue  # read by the embedded broker's launcher (KAFKA_JARS)
            code = _as_documented(Settings.model_fields[name.lower()].default)
            assert default.strip("`") == code, f"README: TALKSTREAM_{name} defaults to {default}"
            checked += 1
    assert checked >= 50


def test_the_stand_ins_knobs_the_readme_names_exist() -> None:
    """`make dev`'s stand-ins take faults at run time (``POST /_control``), which only their
    source said: the README names them, and each it names is one of their settings."""
    from dataclasses import fields

    from streams.dev.openai_standin import OpenAIStandinConfig
    from streams.dev.talkable_standin import TalkableStandinConfig

    match = re.search(r"^The stand-ins take faults.*?(?=\n\n)", README, re.M | re.S)
    assert match, "README says nothing of the stand-ins' faults"
    said = match.group(0)
    openai, _, talkable = said.partition("Talkable's:")
    openai = openai.partition("OpenAI's:")[2]
    for text, config in ((openai, OpenAIStandinConfig), (talkable, TalkableStandinConfig)):
        named = set(re.findall(r"`([a-z0-9]+(?:_[a-z0-9]+)+|down)`", text))
        assert len(named) >= 5, named
        assert named <= {f.name for f in fields(config)}, named - {f.name for f in fields(config)}


def _served_metrics() -> dict[str, tuple[str, set[str]]]:
    """Every series each process serves on ``/metrics``: name as exposed → (labels, servers)."""
    from prometheus_client.metrics import MetricWrapperBase

    from streams.ingress import Metrics
    from streams.observability import ConsumerLag, ExecutorMetrics, ProcessMetrics, WorkerMetrics

    worker, projector, executors = WorkerMetrics(), ProcessMetrics(), ExecutorMetrics()
    for metrics in (worker, projector, executors):  # as serve_worker_http registers it
        metrics.registry.register(ConsumerLag(None, metrics.consumers))
    served: dict[str, tuple[str, set[str]]] = {}
    for server, registry in (
        ("ingress", Metrics().registry),
        ("worker", worker.registry),
        ("projector", projector.registry),
        ("executors", executors.registry),
    ):
        for collector in list(registry._collector_to_names):
            if isinstance(collector, MetricWrapperBase):
                families = [(collector._name, collector._type, collector._labelnames)]
            else:
                families = [(f.name, f.type, f._labelnames) for f in collector.collect()]
            for name, kind, labels in families:
                exposed = name + ("_total" if kind == "counter" else "")
                served.setdefault(exposed, (",".join(labels), set()))[1].add(server)
    return served


def test_every_metric_is_documented_with_its_labels_and_servers() -> None:
    """Six of the seventeen series (the tokens, the generation's and the ingress's latency,
    the targets' calls in flight, rate and 429s) were named nowhere, and none with its labels
    but the upstream calls': an operator building a dashboard had to read the code."""
    match = re.search(r"^\*\*Metrics\*\*.*?\n\n(\|.*?)\n\n", README, re.M | re.S)
    assert match, "README has no **Metrics** table"
    documented = {}
    for row in table_rows(match.group(1)):
        name = re.fullmatch(r"`(talkstream_\w+)(?:\{([\w,]+)\})?`", row[0])
        assert name, f"not a metric: {row[0]}"
        documented[name.group(1)] = (name.group(2) or "", set(row[1].split(", ")))
    assert documented == _served_metrics()


CONSUMERS = (ROOT / "docs" / "consumers.md").read_text()


def test_the_consumer_guide_names_every_lifecycle_field_and_type() -> None:
    """docs/consumers.md's field table is what analytics teams code against: every field of
    ``LifecycleEvent`` is in it, it names none the model lacks, and its ``type`` row lists
    every event type."""
    import typing

    from models.events import LifecycleEvent

    rows = table_rows(section(CONSUMERS, "The lifecycle topic").split("\n\nTerminal states")[0])
    documented = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row[0])}
    assert documented == set(LifecycleEvent.model_fields)
    (types,) = [row[1] for row in rows if row[0] == "`type`"]
    annotation = LifecycleEvent.model_fields["type"].annotation
    assert set(re.findall(r"`([A-Z]\w+)`", types)) == set(typing.get_args(annotation))


def test_the_consumer_guide_names_every_event_type_that_carries_a_field() -> None:
    """A row of docs/consumers.md's field table that names the event types a field is on
    names each the rules set it on: ``model`` was "on ``TextGenerated``", while every
    ``GenerationStarted`` of a first attempt or a redrive says the model asked for (a team
    reading the requested model from it, or taking ``model`` for the answered one
    anywhere), and ``latency_ms`` is on ``GenerationFailed`` too."""
    import typing

    from models.events import LifecycleEvent, PublicationAttemptFailed
    from tests.projection_support import T0_MS, Log

    log = Log()
    log.full("published", limit=3, truncated=True)
    log.full("campaign", email="cy@example.com", event_number="campaign-42")
    log.received("limited", email="dan@example.com", limit=0)
    log.received("skipped", email="eve@example.com", trigger="false")
    log.received("repeated", email="fay@example.com")
    log.received("repeated", email="fay@example.com", delivery="d2")
    failed = log.received("failed", email="gus@example.com", limit=3)
    log.failed(failed, at_ms=T0_MS + 500)
    retried = log.received("retried", email="hal@example.com")
    log.failed(retried, at_ms=T0_MS + 500, retriable=True)
    log.generated(retried, at_ms=T0_MS + 900, attempt=2)
    refused = log.received("refused", email="ivy@example.com")
    log.generated(refused, at_ms=T0_MS + 700)
    log.send(PublicationAttemptFailed(
        request_id="refused", person=refused.person, attempt=1, at_ms=T0_MS + 900,
        error_class="DuplicateEventNumber", error_message="Talkable answered 400",
    ))  # fmt: skip
    log.redriven("redriven", email="jo@example.com", lands=True)
    events = [sourced.event for sourced in log.records]
    optional = [  # the fields some events carry (null on the others)
        name
        for name, info in LifecycleEvent.model_fields.items()
        if not info.is_required() and info.default is None
    ]
    carried: dict[str, set[str]] = {name: set() for name in optional}
    for event in events:
        for name in optional:
            if getattr(event, name) is not None:
                carried[name].add(event.type)
    annotation = LifecycleEvent.model_fields["type"].annotation
    types = set(typing.get_args(annotation))
    assert {event.type for event in events} == types  # every type made above

    rows = table_rows(section(CONSUMERS, "The lifecycle topic").split("\n\nTerminal states")[0])
    for row in rows[1:]:  # (the first, ``type``, lists every type)
        named = set(re.findall(r"`([A-Z]\w+)`", row[1])) & types
        if not named:
            continue  # a row that names no type ("on failures", "every event")
        for field in set(re.findall(r"`([a-z_]+)`", row[0])) & set(optional):
            missing = carried[field] - named
            assert not missing, f"`{field}` is on {sorted(missing)} too; its row names them not"


def test_the_consumer_guide_says_a_repeats_request_id_is_not_the_one_answered() -> None:
    """The ingress answers a repeat of a webhook (Talkable's retry) with the original's
    ``request_id``, while the ledger names the repeat's transitions ``<id>~<delivery>``: a
    team joining the ingress's answers to [lifecycle] by ``request_id`` found the original
    under it, and the rejected repeat under no id it knew; the guide's ``request_id`` row
    said only "who"."""
    from tests.projection_support import Log

    log = Log()
    original = log.received("fingerprint")
    repeat = log.received("fingerprint", delivery="d2")
    assert original.request_id == repeat.request_id  # what the ingress answers both
    events = [sourced.event for sourced in log.records]
    assert [
        (e.type, e.request_id) for e in events if e.state in ("received", "rejected_duplicate")
    ][-2:] == [
        ("RequestReceived", f"fingerprint~{repeat.delivery_id}"),
        ("DuplicateRejected", f"fingerprint~{repeat.delivery_id}"),
    ]
    rows = table_rows(section(CONSUMERS, "The lifecycle topic").split("\n\nTerminal states")[0])
    (said,) = [row[1] for row in rows if row[0].startswith("`request_id`")]
    assert "`<request_id>~<delivery>`" in said and "answered" in said


def test_the_consumer_guide_calls_public_only_the_topics_the_catalogue_does() -> None:
    """docs/consumers.md called the dead-letter topic public beside the lifecycle topic, while
    the catalogue (and topology.md) give it to operators: its letters keep the commands they
    are about, with sealed keys, the keys' fingerprints, prompts and texts. An analytics team
    given read access to what the guide calls public read them."""
    from streams.topics import CATALOGUE

    text = " ".join(section(CONSUMERS, "Schemas and compatibility").split())
    match = re.search(r"The public (?:ones are|one is) (.*?);", text)
    assert match, "the guide no longer says which topics are public"
    said = set(re.findall(r"\[`([a-z-]+)`\]", match.group(1)))
    assert said == {spec.name for spec in CATALOGUE if spec.audience.startswith("public")}


def test_the_consumer_guide_names_every_column_of_the_projection() -> None:
    """The SQL projection's columns as docs/consumers.md lists them, table by table, are the
    tables' columns (``transitions.id``, a surrogate key, aside)."""
    from streams.projection.tables import Base

    text = " ".join(section(CONSUMERS, "The SQL projection").split())
    spans = {
        "requests": ("Its columns:", "`transitions`: one row"),
        "transitions": ("`transitions`: one row", "`projected_offsets`: the"),
        "projected_offsets": ("`projected_offsets`: the", "`ended_minutes` (migration"),
        "ended_minutes": ("`ended_minutes` (migration", "For example"),
    }
    assert set(spans) == set(Base.metadata.tables)
    for name, (start, end) in spans.items():
        said = text[text.index(start) : text.index(end)]
        named = set(re.findall(r"`([a-z_]+)`", said))
        columns = {c.name for c in Base.metadata.tables[name].columns} - {"id"}
        assert columns <= named, f"{name}: {columns - named} not in docs/consumers.md"


def test_the_consumer_guide_says_how_long_each_bounded_column_is() -> None:
    """A warehouse loader sizes its columns by docs/consumers.md's "Bounded text columns":
    each column of a bounded length is named there with that length (``topic``, 255, of
    ``transitions`` and ``projected_offsets``, was not)."""
    from streams.projection.tables import Base

    text = " ".join(section(CONSUMERS, "The SQL projection").split())
    said = text.split("Bounded text columns:", 1)[1].split(" are unbounded", 1)[0]
    parts = re.split(r"\b(\d+)\b", said)  # names, their length, names, their length, ...
    documented = {
        name: int(length)
        for names, length in zip(parts[0::2], parts[1::2], strict=False)
        for name in re.findall(r"`([a-z_]+)`", names)
    }
    bounded = {
        column.name: column.type.length
        for table in Base.metadata.tables.values()
        for column in table.columns
        if getattr(column.type, "length", None)
    }
    assert {name: documented.get(name) for name in bounded} == bounded


def test_the_layout_names_every_module_of_the_package() -> None:
    """README's Layout is where a newcomer looks for a module: ``observability.py`` (the
    metrics), ``errors.py``, ``logs.py``, ``kafka_options.py`` and five more were not in it,
    nor half of ``agents/`` and ``ops/`` (no ``stats`` module there: it is in ``audit``)."""
    layout = section(README, "Layout")
    named = set(re.findall(r"`([\w.]+/?)`", layout))
    package = ROOT / "streams"
    top = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in package.iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists()) and path.name != "__init__.py"
    }
    assert top - named == set(), "streams/ modules missing from README's Layout"
    rooms = {
        "agents": layout[layout.index("`agents/` (") : layout.index("`ingress.py`")],
        "ops": layout[layout.index("- `ops/`:") : layout.index("- `console/`")],
    }
    for room, bullet in rooms.items():
        said = set(re.findall(r"`(\w+)`", bullet))
        modules = {p.stem for p in (package / room).glob("*.py")} - {"__init__"}
        assert modules - said == set(), f"streams/{room}/ modules missing from README's Layout"
        assert said - modules <= {"talkstream"}, f"README's Layout names no module {said - modules}"


def test_every_settings_bound_is_in_its_row() -> None:
    """TALKSTREAM_PARTITIONS=2000, MAX_BODY_BYTES=512 or PRODUCER_LINGER_MS=90000 stopped every
    command, with nothing in README's table saying the setting had a bound. Each bound other
    than a count's or a duration's floor (0, 1) and a port's range is in its setting's row."""
    import annotated_types

    rows = {
        name.lower(): row[2]
        for row in table_rows(section(README, "Configuration"))
        for name in re.findall(r"`([A-Z_]+)`", row[0])
    }
    checked = 0
    for name, field in Settings.model_fields.items():
        if name.endswith("_port"):
            continue  # 0 to 65535, as any port
        bounds = [
            getattr(m, kind)
            for m in field.metadata
            for kind in ("ge", "gt", "le", "lt")
            if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, kind)
        ]
        for bound in bounds:
            if bound in (0, 1) and not any(hasattr(m, "le") for m in field.metadata):
                continue  # a floor only: a count of at least 1, a duration above 0
            said = {str(bound), f"{bound:,}"}
            assert any(
                re.search(rf"(?<![\d,.]){re.escape(s)}(?!\d|,\d)", rows[name]) for s in said
            ), f"README's row of TALKSTREAM_{name.upper()} does not say its bound {bound}"
            checked += 1
    assert checked >= 10


def test_the_request_table_names_every_typed_openai_param() -> None:
    """The ``other openai.*`` row lists the Chat Completions params the ingress reads as
    their JSON type (a Liquid string of one read, anything else a 422); ``max_completion_tokens``
    and ``stream``, typed too, have rules of their own in the table."""
    from models.params import _TYPED_PASSTHROUGH

    rows = {row[0]: row[1] for row in table_rows(section(README, "The request"))}
    listed = re.search(r"the numbers and flags it takes \(([^)]*)\)", rows["other `openai.*`"])
    assert listed
    typed = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert typed | {"max_completion_tokens", "stream"} == set(_TYPED_PASSTHROUGH)
    assert "`openai.max_completion_tokens`" in rows["`openai.max_tokens`"]
    assert "`stream` true is a 422" in rows["other `openai.*`"]


def _options(command: click.Command) -> set[str]:
    """Every option of a command (of each subcommand, for a group), as typed; ``talkstream
    bench`` hands its arguments to the harness's command."""
    if command.name == "bench":
        from bench.command import bench

        command = bench
    if isinstance(command, click.Group):
        return set().union(*(_options(sub) for sub in command.commands.values()))
    return {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def test_the_commands_table_names_each_commands_options_and_no_other() -> None:
    """The Commands table checked the commands only: an option renamed or removed would have
    stayed in it, and ``dev --openai-port`` / ``--talkable-port`` and the servers'
    ``--log-format`` were in no row of theirs."""
    said: dict[str, set[str]] = {name: set() for name in main.commands}
    for row in table_rows(section(README, "Commands")):
        (own,) = re.findall(r"`talkstream ([\w-]+)", row[0])[:1]
        for span in re.findall(r"`([^`]+)`", " | ".join(row)):
            words = span.split()
            owner = own
            if words[0] == "talkstream" and len(words) > 1:
                owner = words[1]
            elif words[0] in main.commands:
                owner = words[0]  # another command's option, e.g. migrate's `replay --force`
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                assert option in _options(main.commands[owner]), f"{owner} has no {option}"
                said[owner].add(option)
    missing = {
        f"{name} {option}"
        for name, command in main.commands.items()
        if name != "bench"  # its options are the harness's: bench --help, BENCHMARKS.md
        for option in _options(command) - said[name]
    }
    assert missing == set(), "options missing from their row of README's Commands table"


def _diagram_edges(diagram: str) -> set[tuple[str, str]]:
    """The transitions a state diagram draws: ``a ─> b``, a branch ``a ─┬─> b`` whose ``├─>``
    and ``└─>`` below it (in its column) start at ``a`` too, ``b | c`` for either."""
    from models.lifecycle import State

    states = {s.value for s in State}
    token = re.compile(r"(?P<state>\w+)|(?P<branch>─┬─>)|(?P<fork>[├└]─>)|(?P<arrow>─>)|\|")
    owners: dict[int, str] = {}
    edges = set()
    for line in diagram.splitlines():
        last = source = drawn_from = None
        for match in token.finditer(line):
            kind = match.lastgroup
            if kind == "state":
                if match.group() not in states:
                    continue
                if source is not None:
                    edges.add((source, match.group()))
                    drawn_from = source
                last, source = match.group(), None
            elif kind == "branch":
                owners[match.start() + 1] = source = last
            elif kind == "fork":
                source = owners[match.start()]
            elif kind == "arrow":
                source = last
            else:  # "|": another state the same arrow leads to
                source = drawn_from
    return edges


@pytest.mark.parametrize("text", [README, TOPOLOGY], ids=["README", "topology"])
def test_the_state_diagrams_draw_the_transition_table(text: str) -> None:
    """README's and topology.md's diagrams are what an operator reads the lifecycle from;
    the one table of transitions is ``models/lifecycle.py``. Re-issues (a state to itself)
    and the legacy ``publish_failed → published`` are said beside the diagram, not drawn."""
    from models.lifecycle import TRANSITIONS

    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S)  # fences in pairs
    (diagram,) = [block for block in blocks if "received ─┬─>" in block]
    table = {
        (a.value, b.value) for a, targets in TRANSITIONS.items() if a for b in targets if a != b
    }
    assert _diagram_edges(diagram) == table - {("publish_failed", "published")}
    if text is TOPOLOGY:
        assert "`generating → generating` and `publishing → publishing`" in text
        assert "`publish_failed → published`" in text


def test_every_metric_the_docs_name_is_served_with_those_labels() -> None:
    """The alerts, topology.md and the tenants' section name metrics by their series, some
    with labels (``talkstream_in_flight{executor="generator"}``): each is served, and each
    label it names is one of that metric's."""
    served = _served_metrics()
    texts = [README, TOPOLOGY, CONSUMERS, (ROOT / "docs" / "console.md").read_text()]
    named = 0
    for text in texts:
        for name, labels in re.findall(r"\b(talkstream_[a-z_]+)(\{[^}]*\})?", text):
            if name == "talkstream_alembic_version":
                continue  # the projection's migration history, a table
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in served, f"{name} is not a metric talkstream serves"
            said = set(re.findall(r"(\w+)(?:=|,|\})", labels))
            assert said <= set(served[base][0].split(",")), f"{name}{labels}: no such label"
            named += 1
    assert named >= 20


def test_every_default_said_in_words_is_the_settings_default(tmp_path: Path) -> None:
    """The rows the default check passes over (a default said in words: "none", a rule, a
    path from other settings) are None in the settings, and the rule each states is the one
    the code applies."""
    from streams.dev.supervisor import broker_addresses

    worded = {}
    for row in table_rows(section(README, "Configuration")):
        names = [
            n for n in re.findall(r"`([A-Z_]+)`", row[0]) if n.lower() in Settings.model_fields
        ]
        defaults = row[1].split(" / ")
        if len(defaults) != len(names) or not all(re.fullmatch(r"`[^`]+`", d) for d in defaults):
            worded |= {name: row[1] for name in names}
    assert {n.lower() for n in worded} <= {
        n for n, field in Settings.model_fields.items() if field.default is None
    }
    assert worded["SECRET_KEYS"] == worded["CONSOLE_TOKEN"] == "none: required"
    assert worded["MIN_INSYNC_REPLICAS"].startswith("RF - 1, within 1..2")
    assert [Settings(replication_factor=rf).insync_replicas for rf in (1, 2, 3, 5)] == [1, 1, 2, 2]
    assert worded["KAFKA_CONTROLLER_PORT"].startswith("the first bootstrap server's port + 1")
    bootstrap = "127.0.0.1:19092,127.0.0.1:29092"
    for port in (None, 0):
        settings = Settings(kafka_bootstrap=bootstrap, kafka_controller_port=port)
        assert [address[1] for address in broker_addresses(settings)] == [19092, 19093]
    assert worded["DATABASE_URL"].startswith("`sqlite:///DATA_DIR/<APP_ID>.sqlite3`")
    settings = Settings(data_dir=tmp_path, app_id="acme")
    assert settings.resolved_database_url == f"sqlite:///{tmp_path}/acme.sqlite3"
