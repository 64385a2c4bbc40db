"""The contract with downstream consumers: the committed JSON Schemas are what the models
produce, every topic has one, topology.md points at them, and values written at schema v1
still decode (compatibility rule: fields are only added, optional; never renamed or removed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from models.events import DeadLetter, GenerateText, LifecycleEvent, PublishCompletion
from models.ledger import PersonState
from streams.codecs import decode, decode_requests, encode
from streams.ops import schemas
from streams.settings import Settings
from streams.topics import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "tests" / "fixtures" / "v1"

DECODERS: dict[str, Callable[[bytes], BaseModel]] = {
    "requests": decode_requests,
    "generate": lambda raw: decode(GenerateText, raw),
    "completions": lambda raw: decode(PublishCompletion, raw),
    "lifecycle": lambda raw: decode(LifecycleEvent, raw),
    "deadletter": lambda raw: decode(DeadLetter, raw),
    "ledger-changelog": lambda raw: decode(PersonState, raw),
}


def test_committed_schemas_are_what_the_models_generate():
    problems = schemas.drift()
    assert not problems, (
        "schemas/ drifted from models/ (regenerate: python -m streams.ops.schemas):\n"
        + "\n".join(problems)
    )


def test_every_topic_has_a_schema_and_a_decoder():
    settings = Settings(app_id="talkstream")
    topics = {spec.full_name(settings).removeprefix("talkstream-") for spec in CATALOGUE}
    assert topics == set(schemas.TOPIC_VALUES) == set(DECODERS)
    for topic in topics:
        assert schemas.path_for(topic).exists(), topic


def test_topology_points_every_topic_at_its_schema():
    text = (ROOT / "topology.md").read_text()
    section = text.split("## Topics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `<app>-")]
    linked = {
        re.match(r"\| `<app>-([a-z-]+)`", row).group(1): row  # type: ignore[union-attr]
        for row in rows
    }
    assert set(linked) == set(schemas.TOPIC_VALUES)
    for topic, row in linked.items():
        assert f"(schemas/{topic}.schema.json)" in row, row


def test_the_lifecycle_schema_describes_every_field_consumers_read():
    schema = json.loads(schemas.path_for("lifecycle").read_text())
    assert schema["x-schema-version"] >= 1
    assert set(schema["properties"]) == set(LifecycleEvent.model_fields)
    assert {"type", "request_id", "state", "at_ms", "cause"} <= set(schema["required"])
    assert not [name for name in schema["properties"] if "key" in name or "secret" in name]


def test_the_lifecycle_schema_describes_every_field():
    """A team generating its reader from the schema got a description for the fields added
    later (window_start, truncated, ...) and none for the older ones (type, state, cause,
    attempt, model, latency_ms, error_class, ...), which docs/consumers.md explains: every
    property says what it holds, where it is said, and since which schema when it came later."""
    schema = json.loads(schemas.path_for("lifecycle").read_text())
    undescribed = [
        name
        for name, prop in schema["properties"].items()
        if not prop.get("description", "").strip()
    ]
    assert undescribed == []
    said = {name: prop["description"] for name, prop in schema["properties"].items()}
    assert "schema 12" in said["latency_ms"] and "GenerationFailed" in said["latency_ms"]
    assert "GenerationStarted" in said["model"] and "TextGenerated" in said["model"]


def test_the_lifecycle_schema_names_the_token_cap_by_both_its_names():
    """``truncated`` said OpenAI cut the text at the campaign's ``max_tokens``; a campaign
    capping by ``max_completion_tokens`` (a reasoning model's) is cut there as well, as
    docs/consumers.md says: a team generating its reader from the schema was told less."""
    schema = json.loads(schemas.path_for("lifecycle").read_text())
    said = schema["properties"]["truncated"]["description"]
    assert "max_tokens" in said and "max_completion_tokens" in said


def _v1(topic: str) -> list[dict[str, Any]]:
    return json.loads((V1 / f"{topic}.json").read_text())


@pytest.mark.parametrize("topic", sorted(DECODERS))
def test_values_written_at_v1_still_decode_and_keep_every_field(topic: str):
    values = _v1(topic)
    assert values, f"no v1 fixture for {topic}"
    for value in values:
        decoded = DECODERS[topic](json.dumps(value).encode())
        again = json.loads(encode(decoded))
        # nothing renamed, removed or re-typed: every v1 field comes back with its value
        assert {k: again.get(k) for k in value} == value


def test_the_talkable_event_number_is_an_optional_field_of_schema_8():
    """What joins a request with Talkable's event: ``event_number`` on a lifecycle event and
    ``landed_event_number`` on a publisher's result, both optional (a value written before
    decodes, with null there) and kept whole by the codec."""
    lifecycle = json.loads(schemas.path_for("lifecycle").read_text())
    assert lifecycle["x-schema-version"] >= 8
    assert "event_number" in lifecycle["properties"]
    assert "event_number" not in lifecycle["required"]
    requests = json.loads(schemas.path_for("requests").read_text())
    result = requests["$defs"]["PublicationAttemptSucceeded"]
    assert "landed_event_number" in result["properties"]
    assert "landed_event_number" not in result.get("required", [])

    old = [decode(LifecycleEvent, json.dumps(v).encode()) for v in _v1("lifecycle")]
    assert old and {e.event_number for e in old} == {None}
    published = [v for v in _v1("requests") if v["kind"] == "publication_succeeded"]
    assert published
    assert {decode_requests(json.dumps(v).encode()).landed_event_number for v in published} == {
        None
    }
    event = old[0].model_copy(update={"event_number": "order-42-complete"})
    assert decode(LifecycleEvent, encode(event)).event_number == "order-42-complete"
    assert json.loads(encode(event))["event_number"] == "order-42-complete"


def test_the_number_a_publication_attempts_is_an_optional_field_of_schema_9():
    """What joins a failed publication with the Talkable event it attempted:
    ``attempted_event_number`` on a lifecycle event, optional (a value written before decodes,
    with null there) and kept whole by the codec; an event an older version wrote keeps its
    meaning (``event_number`` stays the number a text landed under, absent on other types)."""
    lifecycle = json.loads(schemas.path_for("lifecycle").read_text())
    assert lifecycle["x-schema-version"] >= 9
    assert "attempted_event_number" in lifecycle["properties"]
    assert "attempted_event_number" not in lifecycle["required"]

    old = [decode(LifecycleEvent, json.dumps(v).encode()) for v in _v1("lifecycle")]
    assert old and {e.attempted_event_number for e in old} == {None}
    started = old[0].model_copy(
        update={"type": "PublicationStarted", "attempted_event_number": "order-42-complete"}
    )
    again = decode(LifecycleEvent, encode(started))
    assert (again.attempted_event_number, again.event_number) == ("order-42-complete", None)
    assert json.loads(encode(started))["attempted_event_number"] == "order-42-complete"


@pytest.mark.parametrize("topic", sorted(DECODERS))
def test_a_newer_value_with_fields_we_do_not_know_still_decodes(topic: str):
    for value in _v1(topic):
        newer = {
            **value,
            "schema_version": value.get("schema_version", 1) + 1,
            "added_in_a_later_version": {"anything": [1, 2]},
        }
        decoded = DECODERS[topic](json.dumps(newer).encode())
        assert "added_in_a_later_version" not in json.loads(encode(decoded))


def test_a_drift_names_the_documented_command_that_regenerates(tmp_path, capsys) -> None:
    # a bare `python -m streams.ops.schemas` outside the project's venv cannot import it
    (tmp_path / "lifecycle.schema.json").write_text("{}\n")
    assert schemas.main(["--check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "lifecycle.schema.json: differs from the models" in out
    # the folder checked is the one to regenerate: `talkstream schemas` alone writes the
    # checkout's schemas/ (and said so for any --dir)
    assert out.rstrip().endswith(f"regenerate with: talkstream schemas --dir {tmp_path}")


def test_a_drift_of_the_checkouts_schemas_names_the_documented_command(
    tmp_path, capsys, monkeypatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("")  # a checkout, its schemas/ beside it
    monkeypatch.setattr(schemas, "SCHEMAS_DIR", tmp_path / "schemas")
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "lifecycle.schema.json").write_text("{}\n")
    assert schemas.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert out.rstrip().endswith("regenerate with: talkstream schemas (or make schemas)")


def test_a_check_of_a_folder_that_is_not_there_says_so(tmp_path) -> None:
    """A mistyped --dir named every schema "missing" and asked to regenerate."""
    from click.testing import CliRunner

    from streams.cli import main

    missing = tmp_path / "schemaz"
    refused = CliRunner().invoke(main, ["schemas", "--check", "--dir", str(missing)])
    assert refused.exit_code == 2, refused.output
    assert f"Invalid value for '--dir': {missing} does not exist: nothing to check" in (
        refused.output
    )
    assert "missing" not in refused.output and not missing.exists()


def test_installed_it_asks_where_the_schemas_are_and_writes_where_it_is_told(
    tmp_path, monkeypatch
) -> None:
    """Installed (the compose image), ``schemas/`` beside the package is a folder of
    site-packages: ``--check`` named every file missing, and a plain run wrote into it."""
    from click.testing import CliRunner

    from streams.cli import main

    site_packages = tmp_path / "site-packages"
    monkeypatch.setattr(schemas, "SCHEMAS_DIR", site_packages / "schemas")
    for args in (["schemas"], ["schemas", "--check"]):
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2, refused.output
        assert "not run from a checkout of talkstream: give --dir DIR" in refused.output
    assert not site_packages.exists()
    out = tmp_path / "contract"
    written = CliRunner().invoke(main, ["schemas", "--dir", str(out)])
    assert written.exit_code == 0, written.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{topic}.schema.json" for topic in schemas.TOPIC_VALUES
    )
    assert CliRunner().invoke(main, ["schemas", "--check", "--dir", str(out)]).exit_code == 0
