"""The worker's consumer fetches the ledger table's changelog only to recover it
(``streams.faust_transport.Consumer``): the state it writes there afterwards never comes back
to it, to sit unread in aiokafka's buffer and hold up its next fetch. On the real broker."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.conftest import System, consumer_lags, http, read_topic
from tests.support import seed_params, wait_until

pytestmark = pytest.mark.integration

PEOPLE = 24  # over the deployment's 4 partitions: all four are written to (fixed keys)
ALL_FOUR = {str(p) for p in range(4)}


def _ends(records: list[tuple[int, int, bytes | None, bytes]]) -> dict[int, int]:
    """The last offset of each partition (a compacted topic keeps its last record)."""
    ends: dict[int, int] = {}
    for partition, offset, *_ in records:
        ends[partition] = max(offset, ends.get(partition, -1))
    return ends


def _webhooks(system: System, round_: int) -> None:
    ids = []
    for n in range(PEOPLE):
        content = f"Write a verse for person {n}, round {round_}."  # a new request each round
        status, body = system.post(seed_params(f"person-{n}@example.com", content=content))
        assert status == 202, body
        ids.append(body["request_id"])
    rows = system.wait_terminal(ids)
    assert {row.state for row in rows.values()} == {"published"}


def _metrics_once_ready(system: System) -> str:
    """The worker's /metrics once it is ready and has read [requests] on all four partitions."""
    requests = f"{system.app_id}-requests"
    system.wait_ready()

    def scraped() -> str | None:
        status, text = http("GET", f"{system.worker_url()}/metrics")
        return text if status == 200 and set(consumer_lags(text, requests)) == ALL_FOUR else None

    return wait_until(scraped, 60, what="the worker's lag on [requests]")


def test_the_ledger_fetches_its_changelog_only_to_recover_it(make_system) -> None:
    system = make_system()  # a new deployment: an empty changelog, nothing to recover
    changelog = f"{system.app_id}-ledger-changelog"
    _webhooks(system, 1)
    # the ledger wrote each person's state to its changelog, on every partition...
    written = read_topic(system.kafka.bootstrap, changelog)
    assert {str(partition) for partition in _ends(written)} == ALL_FOUR
    text = _metrics_once_ready(system)
    # ...and read all of [requests], but never fetched its changelog back
    assert consumer_lags(text, f"{system.app_id}-requests") == dict.fromkeys(ALL_FOUR, 0.0)
    assert consumer_lags(text, changelog) == {}

    # a worker restarted without its local store (a new host) reads the changelog to recover
    # its table: now it knows the changelog's watermark, and its table is not behind it...
    system.kill("worker")
    shutil.rmtree(system.root / "worker" / system.app_id / "worker")
    system.start_worker()
    assert consumer_lags(_metrics_once_ready(system), changelog) == dict.fromkeys(ALL_FOUR, 0.0)
    # ...and decides (new webhooks of the same people) on the state it recovered...
    _webhooks(system, 2)
    before, after = _ends(written), _ends(read_topic(system.kafka.bootstrap, changelog))
    assert all(after[p] > before[p] for p in before), (before, after)
    # ...and its own writes since then do not count as lag: the table wrote them
    assert consumer_lags(_metrics_once_ready(system), changelog) == dict.fromkeys(ALL_FOUR, 0.0)


def test_another_app_on_the_same_data_recovers_a_table_of_its_own(make_system) -> None:
    """Two deployments (app ids) run from one data directory with their workers named alike: a
    fresh app id beside the old one's data. Each worker keeps its own app's table store;
    another app's, holding the offsets of another changelog, ended the start (faust's
    recovery: "persisted offset ... higher than the last offset in that topic")."""
    first = make_system()
    _webhooks(first, 1)
    first.stop()  # its store holds its changelog's offsets now
    second = System(first.kafka, first.root)  # a new app id, the same data directory
    assert second.app_id != first.app_id
    try:
        second.start()
        second.wait_ready()
        _webhooks(second, 2)  # requests of its own (the same webhooks are the same requests)
    finally:
        second.stop()
    stores = sorted(
        p.relative_to(first.root).as_posix() for p in (first.root / "worker").glob("*/*")
    )
    assert stores == sorted(f"worker/{app}/worker" for app in (first.app_id, second.app_id))


def test_an_upgraded_worker_names_the_table_store_of_the_earlier_layout(kafka, tmp_path) -> None:
    """A worker upgraded from a version that kept its table store at
    DATA_DIR/worker/<WORKER_NAME> recovers its table into the new folder and says in its log
    which folder to remove (README, "Upgrade with a schema change"). It said so while the app was
    built, before the worker had set up logging, and the line was lost."""
    system = System(kafka, tmp_path)
    earlier = tmp_path / "worker" / "worker"
    (earlier / "v1" / "tables").mkdir(parents=True)
    notice = f"{earlier} is a table store of an earlier layout that no app reads any more"
    worker_log = tmp_path / "worker.log"
    try:
        system.start_worker()
        system.wait_ready()
        wait_until(lambda: notice in worker_log.read_text(errors="replace"), 60, what=notice)
    finally:
        system.stop()
    assert worker_log.read_text(errors="replace").count(notice) == 1
