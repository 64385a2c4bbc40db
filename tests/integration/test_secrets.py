"""Talkable and OpenAI keys never appear in plaintext anywhere we write: the broker's log
segments (every topic, the changelog, dead letters), our processes' logs, the SQL projection,
the worker's table store, or /metrics."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import http
from tests.support import seed_params

pytestmark = pytest.mark.integration


# a segment's offset and time indexes hold positions, never a record's bytes; the broker
# preallocates each at 10 MiB while its segment is active, so with the session's hundreds of
# partitions they were gigabytes of zeros to read (40 s of the suite)
INDEXES = {".index", ".timeindex"}


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file() and p.suffix not in INDEXES]


def test_keys_never_appear_in_plaintext(make_system) -> None:
    # at debug level the worker logs every transition (and the libraries their chatter): none
    # of it may carry a key either
    system = make_system(log_format="json", log_level="debug")
    tag = uuid.uuid4().hex[:12]
    keys = {
        "published": (f"talkable-{tag}-ok", f"sk-{tag}-ok"),
        "refused_by_openai": (f"talkable-{tag}-x", f"sk-{tag}-revoked"),
        "refused_by_talkable": (f"talkable-{tag}-revoked", f"sk-{tag}-ok2"),
    }
    system.openai("POST", "/_control", {"unauthorized_keys": [keys["refused_by_openai"][1]]})
    system.talkable("POST", "/_control", {"api_keys": {"test-site": keys["published"][0]}})
    ids = []
    for name, (talkable_key, openai_key) in keys.items():
        status, body = system.post(
            seed_params(f"{name}@example.com", talkable_key=talkable_key, openai_key=openai_key)
        )
        assert status == 202
        ids.append(body["request_id"])
    rows = system.wait_terminal(ids)
    assert sorted(r.state for r in rows.values()) == [
        "generation_failed",
        "publish_failed",
        "published",
    ]
    # the bad ones were refused at the door of each service, with our error recorded
    assert all(r.error_message for r in rows.values() if r.state != "published")

    secrets = [k.encode() for pair in keys.values() for k in pair]
    scanned = files_under(system.kafka.kafka_dir / "logs", system.root)
    assert any("-requests-" in str(p) for p in scanned)  # the topics' segments are there
    assert any(p.suffix == ".sqlite3" for p in scanned)
    assert any(p.name == "worker.log" for p in scanned)
    leaks, seen_in_requests = [], False
    for path in scanned:  # each file read once (the shared broker's logs hold every test's)
        content = path.read_bytes()
        leaks += [(str(path), secret.decode()) for secret in secrets if secret in content]
        seen_in_requests |= "-requests-" in str(path) and b"published@example.com" in content
    # the scan reads real content: the (non-secret) email is in the requests topic's segments
    assert seen_in_requests
    # the stand-ins are the outside services: they receive the keys (and keep 4 chars only)
    assert leaks == []
    # --log-format json at debug: one object per transition, with its context as keys
    transitions = [
        json.loads(line)
        for line in (system.root / "worker.log").read_text().splitlines()
        if line.startswith("{") and '"state"' in line
    ]
    assert {(t["request_id"], t["state"]) for t in transitions} >= {
        (rid, row.state) for rid, row in rows.items()
    }
    status, metrics = http("GET", f"{system.ingress}/metrics")
    assert status == 200
    assert not any(secret.decode() in str(metrics) for secret in secrets)
