"""Every accepted request still ends in exactly one terminal state when OpenAI throttles or
refuses, Talkable goes down, executors lose work, or poison arrives in a topic."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from models.events import GapProbe
from streams.agents.marks import Mark
from streams.codecs import encode
from tests.integration.conftest import System, group_commits, now_s, produce, read_topic
from tests.support import seed_params, usage, wait_until

pytestmark = pytest.mark.integration


def post_all(system: System, bodies: list[dict]) -> list[str]:
    ids = []
    for body in bodies:
        status, answer = system.post(body)
        assert status == 202, answer
        ids.append(answer["request_id"])
    return ids


def talkable_events(system: System, email_part: str) -> list[dict]:
    return [e for e in system.talkable("GET", "/_events") if email_part in e["email"]]


def test_openai_throttling_half_the_calls_still_publishes_everything(module_system) -> None:
    system = module_system
    system.openai("POST", "/_control", {"rate_limit_fraction": 0.5, "retry_after": "0.2"})
    ids = post_all(system, [seed_params(f"throttled{i}@example.com") for i in range(20)])
    rows = system.wait_terminal(ids, timeout=120)
    assert {row.state for row in rows.values()} == {"published"}
    stats = system.openai("GET", "/_stats")
    assert stats["by_status"].get("429", 0) >= 10  # the throttling really happened
    assert len(talkable_events(system, "throttled")) == 20


def test_openai_401_fails_generation_and_gives_the_slot_back(module_system) -> None:
    system = module_system
    system.openai("POST", "/_control", {"unauthorized_keys": ["sk-revoked-key-0001"]})
    now = now_s()
    limit = usage(1, now=now)
    status, bad = system.post(
        seed_params("refused@example.com", usage_limit=limit, openai_key="sk-revoked-key-0001")
    )
    assert status == 202
    row = system.wait_terminal([bad["request_id"]])[bad["request_id"]]
    assert row.state == "generation_failed"
    assert row.error_class == "Unauthorized"
    assert "401" in (row.error_message or "")
    assert "sk-revoked-key-0001" not in (row.error_message or "")
    assert row.attempts == 1  # 401 is never retried

    # same window, same stale snapshot: the released slot admits the next request
    status, good = system.post(
        seed_params("refused@example.com", usage_limit=limit, content="second try")
    )
    assert status == 202
    row = system.wait_terminal([good["request_id"]])[good["request_id"]]
    assert row.state == "published"
    [event] = talkable_events(system, "refused@")
    assert event["custom_properties"]["__current_usage_amount"] == "1"


def test_talkable_down_for_30s_publishes_everything_once_it_recovers(module_system) -> None:
    system = module_system
    system.talkable("POST", "/_control", {"down_until": time.time() + 30})
    ids = post_all(system, [seed_params(f"outage{i}@example.com") for i in range(20)])
    rows = system.wait_terminal(ids, timeout=180)
    assert {row.state for row in rows.values()} == {"published"}
    events = talkable_events(system, "outage")
    assert len(events) == 20
    assert len({e["event_number"] for e in events}) == 20  # none twice
    refused = [c for c in system.talkable("GET", "/_calls") if c["status"] == 503]
    assert refused  # the outage really happened


def test_lost_generation_is_reissued_when_its_deadline_passes(make_system) -> None:
    # every 2nd OpenAI call hangs: the generator never reports, as if the work were lost
    system = make_system(
        generation_deadline_seconds="3", max_wait_seconds="2", openai_timeout_seconds="120"
    )
    # its executors in their groups (the worker's /readyz, its child's with them: a command
    # waiting for their join past MAX_WAIT_SECONDS failed, on a loaded host)
    system.wait_ready()
    system.openai("POST", "/_control", {"hang_every": 2})
    ids = post_all(system, [seed_params(f"hang{i}@example.com") for i in range(2)])
    rows = system.wait_terminal(ids, timeout=90)
    assert {row.state for row in rows.values()} == {"published"}
    assert sorted(row.attempts for row in rows.values()) == [1, 2]
    retried = next(rid for rid, row in rows.items() if row.attempts == 2)
    causes = [t.cause for t in system.projection.transitions(retried)]
    assert any("overdue; re-issued" in cause for cause in causes)
    assert len(talkable_events(system, "hang")) == 2


@pytest.mark.parametrize(
    "how, executors",
    [
        ("stopped", "process"),
        ("killed", "process"),
        ("replaced", "process"),
        ("killed", "worker"),
        ("replaced", "worker"),
    ],
    ids=[
        "stopped",
        "killed",
        "replaced",
        "killed-executors-in-worker",
        "replaced-executors-in-worker",
    ],
)
def test_a_restarted_worker_reissues_the_work_in_flight_that_only_its_table_holds(
    make_system, how: str, executors: str
) -> None:
    """A worker that ends while a call hangs loses that call; nothing of it is read again by
    the ledger after the restart (offsets and the ledger's own marks are past it, as others'
    webhooks kept coming), so only the state the new worker recovered says it is in flight.
    Stopped gracefully (a deploy's restart), the worker cuts the call short after its drain and
    tells the ledger the attempt was lost. Killed and started again under its name, its
    generator's last commit lists that call alone as unreported (the 200 after it reported),
    so the next run tells the ledger of that one, not of everything taken since. Killed and
    replaced by another instance, the new one reads the dead one's mark when it gets its
    partitions and tells the ledger the same, not its deadline."""
    system = make_system(
        # longer than the whole test: the call is re-issued because a run told the ledger it
        # was lost, never by its deadline. (At 6 s, on a loaded machine the deadline, 8 s after
        # the ledger took the webhook, passed before the kill: the call was re-issued as
        # overdue, and no mark listed it any more.)
        generation_deadline_seconds="600",
        # the re-issued call is taken once the restarted worker's executors have joined their
        # groups, seconds after its ledger issued it: past a shorter maximum wait it is ended
        # (QueueTimeout) uncalled, as the ledger's deadline counts that wait
        max_wait_seconds="60",
        openai_timeout_seconds="120",
        session_timeout_seconds="6",  # the stopped instance's partitions move on this soon
        rebalance_grace_seconds="3" if how == "stopped" else "60",  # killed: the mark, at once
        executors=executors,  # in the worker, killed with it: its mark tells the call lost
    )
    system.openai("POST", "/_control", {"hang_every": 1})
    [stuck] = post_all(system, [seed_params("stuck@example.com")])
    wait_until(
        lambda: system.openai("GET", "/_stats")["in_flight"] == 1, 60, what="its call hanging"
    )
    system.openai("POST", "/_control", {"hang_every": 0})
    others = post_all(system, [seed_params(f"after{i}@example.com") for i in range(200)])
    system.wait_terminal(others, timeout=120)
    if how != "stopped":
        group = f"{system.app_id}-generator"

        def one_unreported() -> bool:  # the generator's marks caught up with its reports
            marks = [
                Mark.parse(m) for _, m in group_commits(system.kafka.bootstrap, group).values()
            ]
            listed = [m.unreported for m in marks if m is not None]
            return len(listed) == len(marks) and sum(b - a for r in listed for a, b in r) == 1

        wait_until(one_unreported, 30, what="the generator's marks listing the hung call alone")
    worker = system.procs.pop("worker")
    if how == "stopped":
        worker.send_signal(signal.SIGTERM)  # a graceful stop: its offsets are committed
        assert worker.wait(timeout=60) == 0
    else:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    assert system.projection.request(stuck).state == "generating"
    system.start_worker("worker-2" if how == "replaced" else "worker")
    row = system.wait_terminal([stuck], timeout=90)[stuck]
    assert (row.state, row.attempts) == ("published", 2)
    causes = [t.cause for t in system.projection.transitions(stuck)]
    expected = "lost (its worker stopped before it ended)"
    assert any(f"attempt 1 {expected}; re-issued" in cause for cause in causes), causes
    if how != "stopped":
        told = re.findall(
            r"generator: partition \d+: (\d+) attempts of the previous run told lost",
            (system.root / f"{'worker-2' if how == 'replaced' else 'worker'}.log").read_text(
                errors="replace"
            ),
        )
        if system.executors_mode == "process":
            # the killed worker's executors child is stopped by the kernel (SIGTERM), as a
            # graceful stop: it cuts the call short after its drain and tells the ledger
            # itself (README, EXECUTORS), leaving the next run nothing to tell
            stopped = (system.root / "worker.log").read_text(errors="replace")
            assert re.search(
                r"generator stopping: \d+ queued commands handed back for the next run, 1 "
                r"calls cut short after \S+s and told lost",
                stopped,
            ), stopped[-3000:]
            assert told == [], told
        else:
            assert [int(n) for n in told] == [1], told


def test_a_graceful_restart_hands_back_what_it_queued_and_spends_no_attempt(make_system) -> None:
    """A deploy's restart (SIGTERM, then the same worker again) while a few calls run and the
    rest wait their turn behind one key: the running calls end within the drain, the queued
    commands go back to their topic untouched, and the next run calls each once, so every
    request is published at its first attempt."""
    system = make_system(stop_drain_seconds="20")
    system.openai("POST", "/_control", {"latency_seconds": 2})
    ids = post_all(system, [seed_params(f"deploy{i}@example.com") for i in range(48)])
    wait_until(lambda: system.openai("GET", "/_stats")["in_flight"] >= 4, 60, what="calls running")
    worker = system.procs.pop("worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    stopped = re.search(
        r"generator stopping: (\d+) queued commands handed back for the next run, (\d+) calls",
        (system.root / "worker.log").read_text(errors="replace"),
    )
    assert stopped is not None and int(stopped.group(1)) > 0, "commands were still queued"
    assert stopped.group(2) == "0", "every running call ended within the drain"
    system.start_worker()
    rows = system.wait_terminal(ids, timeout=120)
    assert {row.state for row in rows.values()} == {"published"}
    assert {row.attempts for row in rows.values()} == {1}
    assert len(system.openai("GET", "/_calls")) == 48, "one OpenAI call each"


def test_a_command_kafka_holds_twice_is_called_once(module_system) -> None:
    """The ledger sends a command again when Kafka gave up on it (its batch decided again,
    ``Ledger._undecided``), yet Kafka may have written it: a node that stopped leading the
    partition between writing the record and acknowledging it answered NotLeaderForPartition,
    and the producer retried it until no leader was left for it, then gave up on it
    (test_producer_outage.py, about one run in five on a loaded host). The topic then holds
    the command twice, and the publisher called Talkable twice for one attempt. Here the copy
    is written by hand behind the command it repeats, and the same site's next command behind
    it: it is published, and each event number was sent once."""
    system = module_system
    log = system.root / "worker.log"
    logged = log.stat().st_size  # what the worker logged for the module's tests before this one
    first, second = (
        system.post(seed_params(f"copied{i}@example.com"))[1]["request_id"] for i in (1, 2)
    )
    system.wait_terminal([first])
    completions = f"{system.app_id}-completions"
    records = read_topic(system.kafka.bootstrap, completions)
    [(_, _, key, value)] = [r for r in records if first.encode() in r[3]]
    produce(system.kafka.bootstrap, completions, key, value)  # one site: the same partition
    _, answer = system.post(seed_params("copied3@example.com"))
    rows = system.wait_terminal([first, second, answer["request_id"]])
    assert {row.state for row in rows.values()} == {"published"}
    sent = [
        call["event_number"]
        for call in system.talkable("GET", "/_calls")
        if call["path"].endswith("/origins/event")
    ]
    assert sorted(sent) == sorted(f"generate_text_complete-{r}" for r in rows), "each once"
    assert b"is a copy of the command it took" in log.read_bytes()[logged:]


def test_poison_message_is_dead_lettered_and_the_partition_keeps_flowing(make_system) -> None:
    system = make_system()
    topic = f"{system.app_id}-requests"
    lifecycle = f"{system.app_id}-lifecycle"
    person = b"test-site:poison@example.com"
    produce(system.kafka.bootstrap, topic, person, b'{"kind": "request_received", "oops": 1}')
    produce(system.kafka.bootstrap, topic, person, b"\xff\xfe not json")
    # the projector's topic too: a record no LifecycleEvent decodes from
    produce(system.kafka.bootstrap, lifecycle, b"not-a-request", b'{"type": "Nonsense"}')

    def letters() -> list[dict]:
        found = [
            json.loads(v)
            for _, _, _, v in read_topic(system.kafka.bootstrap, f"{system.app_id}-deadletter")
        ]
        return found if len(found) >= 3 else []

    # and a GapProbe (a worker's nudge to its own ledger) on that partition is no poison
    probe = GapProbe(partition=0, expected=0, taken=0, at_ms=now_s() * 1000)
    produce(system.kafka.bootstrap, topic, person, encode(probe))
    found = wait_until(letters, 60, what="three dead letters")
    assert sorted(letter["topic"] for letter in found) == [lifecycle, topic, topic]
    assert all(letter["offset"] >= 0 for letter in found)
    assert all("does not decode" in letter["reason"] for letter in found)
    # the same person's partition still flows, and the projection still follows
    status, answer = system.post(seed_params("poison@example.com"))
    assert status == 202
    row = system.wait_terminal([answer["request_id"]])[answer["request_id"]]
    assert row.state == "published"
    assert len(letters()) == 3  # the probe, decided before this webhook, was none


def test_a_poison_record_is_not_dead_lettered_again_by_a_restarted_worker(make_system) -> None:
    """A restarted worker's ledger (or a new owner of the partition) reads again what was
    decided since its last offset mark, which trails by up to 32 offsets. A record that did
    not decode leaves no state that says it was handled: it was dead-lettered again at each
    restart or rebalance (two workers' dead-letter topic held the same source offsets twice,
    and ``talkstream_dead_letters_total`` rose with no new bad input). The batch that letters
    it now writes the mark past it."""
    system = make_system()
    topic = f"{system.app_id}-requests"
    [first] = post_all(system, [seed_params("relettered@example.com")])
    system.wait_terminal([first])  # the partition's mark: written at its first message
    produce(system.kafka.bootstrap, topic, b"test-site:relettered@example.com", b"\xff not json")

    def letters() -> list[tuple[int, int]]:
        found = [
            json.loads(v)
            for _, _, _, v in read_topic(system.kafka.bootstrap, f"{system.app_id}-deadletter")
        ]
        return [(x["partition"], x["offset"]) for x in found if x["topic"] == topic]

    [poison] = wait_until(letters, 60, what="the poison's letter")
    content = "Write a verse for a kite that came back."
    [second] = post_all(system, [seed_params("relettered@example.com", content=content)])
    system.wait_terminal([second])  # decided after the poison, before the restart

    worker = system.procs.pop("worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    system.start_worker()
    # the person's next webhook: its partition is read again from the ledger's last mark
    content = "Write a verse for a kite that flew off again."
    [third] = post_all(system, [seed_params("relettered@example.com", content=content)])
    system.wait_terminal([third])
    assert "since its last mark" in (system.root / "worker.log").read_text(errors="replace")
    assert letters() == [poison]


def test_refused_publication_is_dead_lettered_and_redriven_after_the_fix(make_system) -> None:
    system = make_system()
    system.talkable("POST", "/_control", {"api_keys": {"test-site": "the-current-key"}})
    status, answer = system.post(seed_params("rotated@example.com", talkable_key="an-old-key"))
    assert status == 202
    request_id = answer["request_id"]
    row = system.wait_terminal([request_id])[request_id]
    assert row.state == "publish_failed"
    assert "401" in (row.error_message or "")

    # the operator looks first: each letter with its reason, site and source, and no key
    preview = system.talkstream("redrive", "--dry-run")
    [line] = [line for line in preview.splitlines() if line.startswith("would redrive: ")]
    assert line.startswith(f"would redrive: {request_id} → the ledger  site=test-site  ")
    # the letter names the [requests] record the ledger gave up at: the refused result
    assert f"  from={system.app_id}-completions  decided_at={system.app_id}-requests/" in line
    [decided] = re.findall(r"decided_at=\S+/(\d+)/(\d+)", line)
    requests = read_topic(system.kafka.bootstrap, f"{system.app_id}-requests")
    [result] = [v for p, o, _, v in requests if (str(p), str(o)) == decided]
    assert json.loads(result)["kind"] == "publication_failed"
    assert json.loads(result)["request_id"] == request_id
    assert line.endswith(f"  reason=Unauthorized: {' '.join((row.error_message or '').split())}")
    assert "an-old-key" not in preview and "gAAAA" not in preview  # nor its sealed token

    # the site's key is fixed at Talkable's end; the operator redrives the parked work
    system.talkable("POST", "/_control", {"api_keys": {"test-site": "an-old-key"}})
    out = system.talkstream("redrive")
    assert f"redriven: {request_id} → the ledger  site=test-site  " in out
    assert "reason=Unauthorized: " in out

    def published() -> bool:
        found = system.projection.request(request_id)
        return found is not None and found.state == "published"

    wait_until(published, 60, what="the redriven publication")
    states = [t.state for t in system.projection.transitions(request_id)]
    # the redrive ran through the ledger as one more attempt
    assert states[-3:] == ["publish_failed", "publishing", "published"]
    assert len(talkable_events(system, "rotated@")) == 1
    again = system.talkstream("redrive")
    assert "0 redriven" in again  # each letter is redriven once


def test_a_redrive_is_not_run_again_by_a_restarted_worker(make_system) -> None:
    """A restarted worker's ledger reads again what it decided since its last offset mark
    (it cannot tell a message it decided from one faust dropped). A redrive among them once
    ran the request again on its own: a generation refused for want of quota, redriven once
    the quota was back, then parked again when Talkable refused its publication, was published
    again (an unasked Talkable call, an operator's redrive in the audit trail that no one sent)
    when its person's next webhook arrived after a restart, and `replay --verify` disagreed.
    A redrive now names the stage and attempt it runs again."""
    system = make_system()
    system.openai("POST", "/_control", {"insufficient_quota_keys": ["sk-no-quota-0001"]})
    system.talkable("POST", "/_control", {"api_keys": {"test-site": "the-current-key"}})
    body = seed_params("again@example.com", openai_key="sk-no-quota-0001")
    [request_id] = post_all(system, [body])
    assert system.wait_terminal([request_id])[request_id].state == "generation_failed"

    system.openai("POST", "/_control", {"insufficient_quota_keys": []})  # topped up
    assert f"redriven: {request_id}" in system.talkstream("redrive")

    def parked_again() -> bool:
        found = system.projection.request(request_id)
        return found is not None and found.state == "publish_failed"

    wait_until(parked_again, 60, what="the redriven request parked again (Talkable refuses)")
    before = [(t.state, t.attempt) for t in system.projection.transitions(request_id)]

    worker = system.procs.pop("worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    system.start_worker()
    # the person's next webhook: its partition is read again from the ledger's last mark
    [after] = post_all(system, [seed_params("again@example.com", content="another verse")])
    system.wait_terminal([after])
    assert "since its last mark" in (system.root / "worker.log").read_text(errors="replace")
    assert [(t.state, t.attempt) for t in system.projection.transitions(request_id)] == before
    assert system.projection.request(request_id).state == "publish_failed"
    verified = system.talkstream("replay", "--verify")
    assert "no differences" in verified, verified


def test_a_redrive_of_one_request_leaves_the_others_for_a_later_redrive(make_system) -> None:
    # a filtered redrive once moved the redrive group past every letter it examined, so the
    # parked requests it did not select were never offered again
    system = make_system()
    system.talkable("POST", "/_control", {"api_keys": {"test-site": "the-current-key"}})
    ids = post_all(
        system, [seed_params(f"parked{i}@example.com", talkable_key="an-old-key") for i in (1, 2)]
    )
    rows = system.wait_terminal(ids)
    assert {row.state for row in rows.values()} == {"publish_failed"}
    first, second = ids
    system.talkable("POST", "/_control", {"api_keys": {"test-site": "an-old-key"}})

    out = system.talkstream("redrive", "--request-id", first)
    # (the second's id may be in the first's error: "not called: request <second> (the same
    # key) was refused ...", whichever was refused first)
    assert f"redriven: {first}" in out and f"redriven: {second}" not in out
    assert "1 redriven, 1 not selected" in out
    wait_until(lambda: system.projection.request(first).state == "published", 60, what="one")
    out = system.talkstream("redrive")
    assert f"redriven: {second}" in out
    assert f"redriven: {first}" not in out  # offered again, maybe, but published: left alone
    wait_until(lambda: system.projection.request(second).state == "published", 60, what="two")

    # asked for by name, a request that is not parked any more is said so, and not sent
    out = system.talkstream("redrive", "--from-beginning", "--request-id", first)
    assert f"not parked any more, left alone: {first} (published)" in out
    assert "0 redriven" in out
    assert len(talkable_events(system, "parked")) == 2
    states = [t.state for t in system.projection.transitions(first)]
    assert states.count("publishing") == 2  # the first publication and the one redrive


@pytest.mark.parametrize("refused_with", [400, 200])
def test_a_campaign_event_number_another_request_holds_is_publish_failed(
    module_system, refused_with
) -> None:
    # Talkable keeps one event per number: the second text, under the same number, is refused
    # ("Duplicate entity") and never lands, so it must not be counted as published; the same
    # when the refusal comes as a 200 whose envelope says it ("ok": false). (Each case's person
    # and number are its own: the module's deployment holds the other's.)
    system = module_system
    system.talkable("POST", "/_control", {"duplicate_status": refused_with})
    email, number = f"twice{refused_with}@example.com", f"order-{refused_with}-complete"
    status, first = system.post(seed_params(email, content="one", event_number=number))
    assert status == 202
    row = system.wait_terminal([first["request_id"]])[first["request_id"]]
    assert row.state == "published"
    status, second = system.post(seed_params(email, content="two", event_number=number))
    assert status == 202
    row = system.wait_terminal([second["request_id"]])[second["request_id"]]
    assert (row.state, row.error_class, row.attempts) == (
        "publish_failed",
        "DuplicateEventNumber",
        1,
    )
    events = talkable_events(system, email)
    assert [e["event_number"] for e in events] == [number]
    # what joins the failure with the Talkable event it attempted (the first request's): the
    # number its PublicationFailed says (lifecycle schema 9), in its SQL transition (0010)
    steps = system.projection.transitions(second["request_id"])
    assert [(t.type, t.event_number, t.error_class) for t in steps if t.event_number] == [
        ("PublicationStarted", number, None),
        ("PublicationFailed", number, "DuplicateEventNumber"),
    ]

    def letters() -> list[bytes]:
        deadletter = f"{system.app_id}-deadletter"
        found = read_topic(system.kafka.bootstrap, deadletter)
        return [v for _, _, _, v in found if second["request_id"].encode() in v]

    wait_until(letters, 30, what="the refused publication's dead letter")
    assert f"Talkable answered {refused_with} Duplicate entity".encode() in letters()[-1]


def test_an_exhausted_publication_is_dead_lettered_and_redriven_to_published(make_system) -> None:
    # Talkable answers 503 to everything: retriable, until the publication waited too long
    system = make_system(max_wait_seconds="4")
    # the executors' groups joined first: a generation that waited for the join past the 4 s
    # failed in its queue, not its publication (a loaded host, the executors in their child)
    system.wait_ready()
    system.talkable("POST", "/_control", {"down": True})
    status, answer = system.post(seed_params("exhausted@example.com"))
    assert status == 202
    request_id = answer["request_id"]
    row = system.wait_terminal([request_id], timeout=120)[request_id]
    assert (row.state, row.error_class) == ("publish_failed", "QueueTimeout")
    assert row.cause == "gave up waiting for Talkable: the wait outlasted the maximum wait"
    assert "503" in (row.error_message or "")

    preview = system.talkstream("redrive", "--dry-run", "--reason-contains", "503")
    assert f"would redrive: {request_id}" in preview  # the ledger dead-lettered it
    # by the topic its command was for, named in full or without the app id; not by another
    for topic in ("completions", f"{system.app_id}-completions"):
        preview = system.talkstream("redrive", "--dry-run", "--topic", topic)
        assert f"would redrive: {request_id}" in preview
    assert request_id not in system.talkstream("redrive", "--dry-run", "--topic", "generate")

    system.talkable("POST", "/_control", {"down": False})
    assert f"redriven: {request_id}" in system.talkstream("redrive", "--reason-contains", "503")

    def published() -> bool:
        found = system.projection.request(request_id)
        return found is not None and found.state == "published"

    wait_until(published, 60, what="the redriven publication")
    [history] = json.loads(system.talkstream("audit", "--request-id", request_id, "--json"))[
        "requests"
    ]
    assert [t["state"] for t in history["transitions"]][-4:] == [
        "publishing",
        "publish_failed",
        "publishing",
        "published",
    ]
    assert "redriven by an operator" in history["transitions"][-2]["cause"]
    [event] = talkable_events(system, "exhausted@")
    assert event["event_number"] == f"generate_text_complete-{request_id}"
