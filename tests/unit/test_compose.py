"""The Docker deployment (compose/compose.yaml, compose/Dockerfile, .dockerignore) as a user
meets it: every variable means something to talkstream, every command exists, the processes
agree on Kafka, topics and keys, workers scale, the services wait for what they need.

No Docker engine is needed. compose.yaml is read with a small parser for the YAML it is written
in (block mappings and sequences, flow lists of scalars, quoted and plain scalars; anything else
is refused, so the file stays readable by it). When PyYAML happens to be importable, the parser's
result is checked against it. ``docker compose config`` runs only where the compose plugin is
installed.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from packaging.specifiers import SpecifierSet
from sqlalchemy.engine import make_url

from streams.cli import main as cli_main
from streams.dev.kafka import DEFAULT_KAFKA_VERSION
from streams.settings import DEFAULT_OPENAI_BASE_URL, DEFAULT_TALKABLE_BASE_URL, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PREFIX = "TALKSTREAM_"
# services that run our image, and what every one of them must agree on
OURS = ("topics", "worker", "ingress")
SHARED = ("KAFKA_BOOTSTRAP", "APP_ID", "PARTITIONS", "REPLICATION_FACTOR")
A_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()
Services = dict[str, dict[str, Any]]


# --- a reader for the YAML subset compose.yaml is written in -------------------------------------


class UnsupportedYaml(ValueError):
    pass


_KEY = re.compile(r"^([A-Za-z0-9_.-]+):(?:[ ]+(.*))?$")
_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
_AMBIGUOUS = {"yes", "no", "on", "off", "y", "n"}  # YAML 1.1 booleans: quote them


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise UnsupportedYaml(f"unterminated or multi-line string: {text}")
        return json.loads(text)
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise UnsupportedYaml(f"unterminated or multi-line string: {text}")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise UnsupportedYaml(f"multi-line flow sequence: {text}")
        return _flow_items(text[1:-1])
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text.lower() in _AMBIGUOUS:
        raise UnsupportedYaml(f"quote {text!r}: YAML 1.1 reads it as a boolean")
    if text[0] in "&*!|>%@`{,?-" and not _INT.match(text):
        raise UnsupportedYaml(f"unsupported plain scalar (anchor, tag, block or flow): {text}")
    if re.match(r"^[-+]?[0-9][0-9_]*(:[0-9_]+)+", text):
        raise UnsupportedYaml(f"quote {text!r}: YAML 1.1 may read 1:2 as a base-60 number")
    if ": " in text or text.endswith(":"):
        raise UnsupportedYaml(f"a mapping inside a plain scalar: {text}")
    if re.match(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise UnsupportedYaml(f"quote {text!r}: YAML reads it as a date")
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _flow_items(body: str) -> list[Any]:
    items, current, quote = [], "", None
    for ch in body:
        if quote:
            current += ch
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            current += ch
        elif ch in "[]{}":
            raise UnsupportedYaml(f"nested flow collection: [{body}]")
        elif ch == ",":
            items.append(_scalar(current))
            current = ""
        else:
            current += ch
    if quote:
        raise UnsupportedYaml(f"unterminated string in [{body}]")
    if current.strip():
        items.append(_scalar(current))
    return items


def load_yaml_subset(text: str) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if raw.lstrip(" ").startswith("\t"):
            raise UnsupportedYaml("tab in indentation")
        line = _strip_comment(raw)
        if line.strip():
            if line.strip() in ("---", "..."):
                raise UnsupportedYaml("document markers")
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1] == "-" or lines[i][1].startswith("- "):
            return sequence(i, indent)
        return mapping(i, indent)

    def child(i: int, indent: int) -> tuple[Any, int]:
        if i < len(lines) and lines[i][0] > indent:
            return block(i, lines[i][0])
        if i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            raise UnsupportedYaml(f"indent the sequence under its key: {lines[i][1]}")
        return None, i

    def mapping(i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            match = _KEY.match(lines[i][1])
            if not match:
                raise UnsupportedYaml(f"not a 'key: value' line: {lines[i][1]}")
            key, value = match.group(1), match.group(2)
            if key in out:
                raise UnsupportedYaml(f"duplicate key {key}")
            if value is None or not value.strip():
                out[key], i = child(i + 1, indent)
            else:
                out[key], i = _scalar(value), i + 1
        if i < len(lines) and lines[i][0] > indent:
            raise UnsupportedYaml(f"unexpected indentation: {lines[i][1]}")
        return out, i

    def sequence(i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            item = lines[i][1][1:].strip()
            if not item or _KEY.match(item):
                raise UnsupportedYaml(f"only scalars in block sequences: {lines[i][1]}")
            out.append(_scalar(item))
            i += 1
        return out, i

    if not lines:
        return None
    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise UnsupportedYaml(f"cannot read from: {lines[end][1]}")
    return value


# --- compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}) --


class MissingVariable(LookupError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(text):
                    raise ValueError(f"unterminated ${{ in {text!r}")
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(_expand(text[i + 2 : j - 1], env))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expand(expr: str, env: dict[str, str]) -> str:
    match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?$", expr, re.S)
    assert match, f"bad interpolation ${{{expr}}}"
    name, op, arg = match.groups()
    value = env.get(name)
    if op is None:
        return value or ""
    empty_counts = op.startswith(":")
    missing = value is None or (empty_counts and value == "")
    if op.endswith("-"):
        return interpolate(arg, env) if missing else str(value)
    if missing:
        raise MissingVariable(f"{name}: {arg}")
    return str(value)


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = load_yaml_subset(compose_text)
    if importlib.util.find_spec("yaml") is not None:  # a second opinion where PyYAML exists
        assert data == importlib.import_module("yaml").safe_load(compose_text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    found: Services = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "write environment as a mapping"
    return {key: "" if value is None else str(value) for key, value in env.items()}


def resolved(service: dict[str, Any], shell: dict[str, str] | None = None) -> dict[str, str]:
    shell = {"TALKSTREAM_SECRET_KEYS": A_KEY} if shell is None else shell
    return {key: interpolate(value, shell) for key, value in environment(service).items()}


def settings_field(variable: str) -> str:
    assert variable.startswith(PREFIX), variable
    return variable.removeprefix(PREFIX).lower()


def our_services(services: Services) -> Services:
    image = services["worker"]["image"]
    return {name: svc for name, svc in services.items() if svc.get("image") == image}


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, os.path.normpath(line.lstrip("!").strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in patterns:
        regex = _glob_regex(pattern)
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


# --- the reader itself --------------------------------------------------------------------------


def test_the_yaml_reader_reads_what_compose_files_use_and_refuses_the_rest() -> None:
    text = (
        "a:\n  b: 1\n  c: \"x: ${Y:-z}\"  # comment\n  d: [\"CMD\", 'it''s', 3]\n"
        '  e:\n    - "8080:8080"\n    - /var/lib\n  f:\n  g: "false"\n  h: 30s\n'
    )
    assert load_yaml_subset(text) == {
        "a": {
            "b": 1,
            "c": "x: ${Y:-z}",
            "d": ["CMD", "it's", 3],
            "e": ["8080:8080", "/var/lib"],
            "f": None,
            "g": "false",
            "h": "30s",
        }
    }
    for bad in ("a: no\n", "a: 8080:80\n", "a: &x 1\n", "a: |\n  text\n", "a: {b: 1}\n"):
        with pytest.raises(UnsupportedYaml):
            load_yaml_subset(bad)


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert (
        interpolate("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}/$${SET}", env) == "v/d/d//${SET}"
    )
    assert interpolate("${UNSET:-a${SET:-b}c}", env) == "avc"
    with pytest.raises(MissingVariable, match="set it"):
        interpolate("${EMPTY:?set it}", env)


# --- compose.yaml -------------------------------------------------------------------------------


def test_every_talkstream_variable_is_a_setting(compose_text: str, services: Services) -> None:
    used = {key for svc in services.values() for key in environment(svc) if key.startswith(PREFIX)}
    used |= set(re.findall(r"\$\{(TALKSTREAM_[A-Za-z0-9_]+)", compose_text))
    used |= set(re.findall(r"\b(TALKSTREAM_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert used, "compose.yaml configures talkstream through TALKSTREAM_ variables"
    unknown = sorted(name for name in used if settings_field(name) not in Settings.model_fields)
    assert not unknown, f"not fields of streams.settings.Settings: {unknown}"


def test_compose_readme_names_every_variable_the_file_takes(compose_text: str) -> None:
    """compose/README.md tells an operator which variables the file takes from the shell
    (the rest need an edit of ``environment:``): its list is the file's ``${...}``."""
    readme = " ".join((COMPOSE_DIR / "README.md").read_text().split())
    said = re.search(
        r"passes them to the containers, each with the `TALKSTREAM_` prefix: (.*?)\.", readme
    )
    assert said
    listed = {f"TALKSTREAM_{name}" for name in re.findall(r"`([A-Z_]+)`", said.group(1))}
    taken = set(re.findall(r"\$\{(TALKSTREAM_[A-Z0-9_]+)", compose_text))
    assert listed == taken
    for other in set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", compose_text)) - taken:
        assert f"`{other}`" in readme, f"compose/README.md does not say what {other} sets"


def test_each_services_environment_is_valid_settings(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, svc in our_services(services).items():
        for key in list(os.environ):
            if key.startswith(PREFIX):
                monkeypatch.delenv(key)
        for key, value in resolved(svc).items():
            monkeypatch.setenv(key, value)
        try:
            Settings()
        except Exception as exc:  # the message names the field and the value
            pytest.fail(f"{name}: its environment is not valid Settings: {exc}")


def test_every_command_is_a_talkstream_subcommand(services: Services) -> None:
    ours = our_services(services)
    assert set(OURS) <= set(ours), "topics, worker and ingress run the talkstream image"
    for name, svc in ours.items():
        command = svc["command"]
        assert isinstance(command, list) and command, f"{name}: write command as a list"
        assert "entrypoint" not in svc, f"{name}: the image's entrypoint is `talkstream`"
        group: click.Command = cli_main
        args = list(command)
        while isinstance(group, click.Group) and args and not args[0].startswith("-"):
            sub = group.get_command(click.Context(group), args[0])
            assert sub is not None, f"{name}: `talkstream {shlex.join(command)}` does not exist"
            group, args = sub, args[1:]
        assert not isinstance(group, click.Group), f"{name}: `{shlex.join(command)}` is a group"
        group.make_context(f"talkstream {command[0]}", args)  # options exist and parse


def test_our_services_build_the_image_from_the_repository(services: Services) -> None:
    for name, svc in our_services(services).items():
        build = svc.get("build")
        assert build, f"{name}: `build` so `docker compose up` never pulls talkstream:local"
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_kafka_is_the_embedded_brokers_version_in_kraft_mode(
    compose: dict[str, Any], services: Services
) -> None:
    kafka = services["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka"
    assert tag == DEFAULT_KAFKA_VERSION, "compose runs the embedded broker's default Kafka"
    pom = (COMPOSE_DIR / "kafka" / tag / "pom.xml").read_text()
    assert f"<kafka.version>{tag}</kafka.version>" in pom, "dev and compose run the same Kafka"

    env = environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    assert listeners == {"PLAINTEXT": ":9092", "CONTROLLER": ":9093"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # the image formats its storage with CLUSTER_ID and refuses anything but a base64 UUID
    try:
        raw = base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")
    except (KeyError, binascii.Error):
        pytest.fail("CLUSTER_ID must be set to a base64 UUID (kafka-storage.sh random-uuid)")
    assert len(env["CLUSTER_ID"]) == 22 and len(raw) == 16, "CLUSTER_ID is a base64 UUID"
    assert not env["CLUSTER_ID"].startswith("-")
    # the data survives `docker compose down` (a named volume, declared at the top level)
    data_dir = env["KAFKA_LOG_DIRS"]
    named = [v.split(":")[0] for v in kafka["volumes"] if v.split(":")[1:2] == [data_dir]]
    assert named and named[0] in (compose.get("volumes") or {}), "log dir on a named volume"


def test_clients_reach_the_advertised_listener(services: Services) -> None:
    advertised = environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    for name in OURS:
        bootstrap = resolved(services[name])["TALKSTREAM_KAFKA_BOOTSTRAP"]
        assert bootstrap == advertised.removeprefix("PLAINTEXT://"), name


def test_the_processes_agree_on_kafka_topics_and_keys(services: Services) -> None:
    envs = {name: environment(services[name]) for name in OURS}
    for setting in SHARED:
        values = {envs[name].get(PREFIX + setting) for name in OURS}
        assert len(values) == 1 and None not in values, f"{setting} differs: {values}"
    keys = {envs[name].get(PREFIX + "SECRET_KEYS") for name in ("worker", "ingress")}
    assert len(keys) == 1 and None not in keys, "worker and ingress share TALKSTREAM_SECRET_KEYS"
    # a forgotten key fails `docker compose up` instead of each process inventing its own
    (value,) = keys
    assert value is not None
    assert re.fullmatch(r"\$\{TALKSTREAM_SECRET_KEYS:\?[^}]+\}", value), value
    with pytest.raises(MissingVariable):
        resolved(services["worker"], shell={})


def test_real_apis_by_default_and_postgres_through_psycopg(services: Services) -> None:
    env = resolved(services["worker"])
    assert env["TALKSTREAM_OPENAI_BASE_URL"] == DEFAULT_OPENAI_BASE_URL
    assert env["TALKSTREAM_TALKABLE_BASE_URL"] == DEFAULT_TALKABLE_BASE_URL
    url = make_url(env["TALKSTREAM_DATABASE_URL"])
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "postgres"
    url.get_dialect()  # the driver's dialect loads (psycopg is a dependency)
    postgres = environment(services["postgres"])
    assert url.username == postgres["POSTGRES_USER"]
    assert url.database == postgres["POSTGRES_DB"]
    assert url.password == interpolate(postgres["POSTGRES_PASSWORD"], {}), "default password"
    shell = {"TALKSTREAM_SECRET_KEYS": A_KEY, "POSTGRES_PASSWORD": "s3cret"}
    assert make_url(resolved(services["worker"], shell)["TALKSTREAM_DATABASE_URL"]).password == (
        interpolate(postgres["POSTGRES_PASSWORD"], shell)
    ), "one POSTGRES_PASSWORD sets the server's and the worker's"


def test_workers_scale(services: Services) -> None:
    worker = services["worker"]
    for fixed in ("container_name", "ports", "hostname"):
        assert fixed not in worker, f"worker has {fixed}: a second replica would clash"
    assert worker.get("deploy", {}).get("replicas", 1) >= 1
    # each replica keeps its table store on its own (anonymous) volume at DATA_DIR
    data_dir = resolved(worker)["TALKSTREAM_DATA_DIR"]
    assert data_dir in worker.get("volumes", []), "an anonymous volume at TALKSTREAM_DATA_DIR"


def test_healthchecks_and_start_order(services: Services) -> None:
    for name in ("kafka", "postgres", "ingress"):
        test = services[name].get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name
    kafka_check = services["kafka"]["healthcheck"]["test"]
    assert Path(kafka_check[1]).name in ("kafka-broker-api-versions.sh", "kafka-topics.sh")
    assert kafka_check[1].startswith("/opt/kafka/bin/")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]

    for name, svc in services.items():
        for target, dependency in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = dependency["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot"
            else:
                assert condition == "service_started", condition

    def waits(name: str) -> dict[str, str]:
        return {t: d["condition"] for t, d in services[name]["depends_on"].items()}

    assert waits("topics") == {"kafka": "service_healthy"}
    assert waits("worker") == {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "topics": "service_completed_successfully",
    }
    assert waits("ingress") == {
        "kafka": "service_healthy",
        "topics": "service_completed_successfully",
    }


def test_ingress_listens_on_all_interfaces_and_is_published(services: Services) -> None:
    ingress = services["ingress"]
    env = resolved(ingress)
    assert env["TALKSTREAM_INGRESS_HOST"] == "0.0.0.0", "127.0.0.1 is unreachable from the host"
    port = env.get("TALKSTREAM_INGRESS_PORT", "8080")
    published = [interpolate(p, {}) for p in ingress["ports"]]
    assert [p.rsplit(":", 1)[1] for p in published] == [port]
    assert published == ["8080:8080"], "8080 on the host by default"
    check = " ".join(map(str, ingress["healthcheck"]["test"]))
    assert f"127.0.0.1:{port}/readyz" in check, "healthy = a webhook would be written now"


def test_standins_are_an_opt_in_profile(services: Services) -> None:
    standins = {
        name: svc for name, svc in services.items() if "standins" in svc.get("profiles", [])
    }
    commands = {tuple(svc["command"][:2]) for svc in standins.values()}
    assert commands == {("standin", "openai"), ("standin", "talkable")}
    for name, svc in standins.items():
        command = svc["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0", name
    for name in ("kafka", "postgres", *OURS):
        assert "profiles" not in services[name], f"{name} runs without a profile"


# --- Dockerfile and .dockerignore ---------------------------------------------------------------


def test_dockerfile_builds_with_the_pins_and_runs_talkstream_unprivileged() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build tools stay in the builder"
    bases = [interpolate(stage[0][1].split()[0], args) for stage in stages]
    assert all(base == "python:3.11-slim" for base in bases), bases
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains("3.11"), "the image's Python satisfies the project"

    builder, final = stages[0], stages[-1]
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs), "install with the pins"
    final_text = " ".join(f"{keyword} {rest}" for keyword, rest in final)
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in final_text, f"the final image installs nothing: {tool}"
    assert any(k == "COPY" and rest.startswith("--from=builder") for k, rest in final)

    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "runs unprivileged"
    assert ("ENTRYPOINT", '["talkstream"]') in final
    assert ("CMD", '["worker"]') in final


def test_the_build_context_has_the_sources_and_nothing_else() -> None:
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by .dockerignore"
        if (ROOT / source).is_dir():
            assert not dockerignore_excludes(f"{source}/settings.py")
    for kept_out in (
        ".venv/bin/python",
        ".data/secret.key",
        ".git/config",
        "tests/unit/test_compose.py",
        "streams/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        "talkstream.egg-info/PKG-INFO",
    ):
        assert dockerignore_excludes(kept_out), f"{kept_out} reaches the build context"


# --- the real thing, where the compose plugin is installed --------------------------------------


def _compose_cli() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    )
    return docker if probe.returncode == 0 else None


def test_docker_compose_accepts_the_file(services: Services) -> None:
    docker = _compose_cli()
    if docker is None:
        pytest.skip("needs the docker client with the compose plugin (`docker compose version`)")
    base = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    base.pop("POSTGRES_PASSWORD", None)
    cmd = [docker, "compose", "-f", str(COMPOSE_FILE), "--profile", "standins", "config"]

    done = subprocess.run(
        [*cmd, "--format", "json"],
        env={**base, "TALKSTREAM_SECRET_KEYS": A_KEY},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert set(config["services"]) == set(services)
    worker = config["services"]["worker"]
    assert worker["environment"] == resolved(services["worker"])
    assert Path(worker["build"]["context"]).resolve() == ROOT

    missing = subprocess.run(cmd, env=base, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0
    assert "TALKSTREAM_SECRET_KEYS" in missing.stderr
