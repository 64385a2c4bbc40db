"""Workers die mid-burst (SIGKILL, no goodbye); every request still ends terminal, once,
and every limit holds."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from streams.agents.ledger import partition_of
from streams.agents.marks import Mark
from streams.secrets import key_fingerprint
from tests.integration.conftest import (
    System,
    consumer_lags,
    described_group,
    group_commits,
    http,
    now_s,
    samples,
)
from tests.integration.test_truthful_edges import issued_by_person, values_of
from tests.support import free_port, poll, seed_params, usage, wait_until

pytestmark = pytest.mark.integration

PEOPLE = 100
PER_PERSON = 5
LIMIT = 3
FAST_FAILOVER = {
    "session_timeout_seconds": "6",
    "generation_deadline_seconds": "8",
    "publish_deadline_seconds": "8",
    # no rebalance grace (the default): the calls the killed worker had in flight are told
    # lost by the worker that takes its executors' partitions, or by its next run
}


def burst(now: int) -> list[dict]:
    """PER_PERSON requests for each of PEOPLE people, all with the same stale snapshot."""
    return [
        seed_params(f"crash{p}@example.com", content=f"note {i}", usage_limit=usage(LIMIT, now=now))
        for i in range(PER_PERSON)
        for p in range(PEOPLE)
    ]


def post_in_background(system: System, bodies: list[dict]) -> tuple[threading.Thread, list]:
    answers: list = []

    def run() -> None:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers.extend(pool.map(system.post, bodies))

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def six_calls_running(
    system: System, openai_key: str, prefix: str
) -> tuple[threading.Thread, list]:
    """Six people's webhooks on one OpenAI key, posted in the background, once each of their
    calls is running at the stand-in."""
    bodies = [
        seed_params(f"{prefix}{p}@example.com", content=f"{prefix} {p}", openai_key=openai_key)
        for p in range(6)
    ]
    thread, answers = post_in_background(system, bodies)
    wait_until(
        lambda: system.openai("GET", "/_stats")["in_flight"] == 6, 60, what="every call running"
    )
    return thread, answers


def terminal_count(system: System) -> int:
    return sum(1 for row in system.projection.requests() if row.terminal)


def check_outcome(system: System, answers: list) -> None:
    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    assert len(set(ids)) == len(ids) == PEOPLE * PER_PERSON
    rows = system.wait_terminal(ids, timeout=240)

    published = Counter(row.person for row in rows.values() if row.state == "published")
    limited = Counter(row.person for row in rows.values() if row.state == "limited")
    assert set(published.values()) == {LIMIT}, "every person gets exactly the limit"
    assert set(limited.values()) == {PER_PERSON - LIMIT}
    events = [e for e in system.talkable("GET", "/_events") if e["email"].startswith("crash")]
    numbers = Counter(e["event_number"] for e in events)
    assert numbers and max(numbers.values()) == 1, "no Talkable event published twice"
    assert len(events) == PEOPLE * LIMIT


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; whoever adopted it may not have reaped it yet


@pytest.mark.parametrize(
    ("projector", "executors"),
    [("worker", "worker"), ("process", "worker"), ("off", "worker"), ("process", "process")],
)
def test_worker_killed_mid_burst_recovers_everything(
    make_system, projector: str, executors: str
) -> None:
    """The projector in the worker, in its child process (which dies with it), or on its own
    (``talkstream projector``, which outlives it): the projection ends complete either way.
    So it does with the executors in a child process of their own (which stops with the
    worker: its calls end and report, its queued commands go back)."""
    port = free_port()  # the projector's own /metrics, when it runs outside the worker
    system = make_system(
        **FAST_FAILOVER, projector=projector, projector_http_port=str(port), executors=executors
    )
    if projector == "off":
        system.spawn("projector", "projector")
    system.openai("POST", "/_control", {"latency_seconds": 0.05})
    thread, answers = post_in_background(system, burst(now_s()))
    wait_until(lambda: terminal_count(system) >= 60, 120, what="the burst to be under way")
    worker = system.procs["worker"].pid
    children = _children(worker)
    assert len(children) == [projector, executors].count("process")
    system.kill("worker")  # SIGKILL: in-flight generations and uncommitted offsets are lost
    # the worker's child processes end with it (nothing else reads as its group members)
    wait_until(lambda: not any(_alive(c) for c in children), 60, what="its children to end")
    system.start_worker()
    thread.join(timeout=240)
    check_outcome(system, answers)
    if projector != "worker":  # its lag, partition by partition, on its own /metrics
        lifecycle = f"{system.app_id}-lifecycle"

        def caught_up() -> bool:
            status, text = http("GET", f"http://127.0.0.1:{port}/metrics")
            lags = consumer_lags(text if status == 200 else "", lifecycle)
            return bool(lags) and not any(lags.values())

        wait_until(caught_up, 60, what="the projector's lag at 0 on its /metrics")


def test_two_workers_one_killed_the_survivor_takes_over(make_system) -> None:
    system = make_system(**FAST_FAILOVER)
    system.start_worker("worker-b")
    system.openai("POST", "/_control", {"latency_seconds": 0.05})
    thread, answers = post_in_background(system, burst(now_s()))
    wait_until(lambda: terminal_count(system) >= 60, 120, what="the burst to be under way")
    system.kill("worker")
    thread.join(timeout=240)
    check_outcome(system, answers)
    assert system.procs["worker-b"].poll() is None


def test_a_burst_for_one_person_is_exact_with_two_workers(make_system) -> None:
    system = make_system(**FAST_FAILOVER)
    system.start_worker("worker-b")
    bodies = [
        seed_params("duo@example.com", content=f"v{i}", usage_limit=usage(3, now=now_s()))
        for i in range(50)
    ]
    with ThreadPoolExecutor(max_workers=25) as pool:
        answers = list(pool.map(system.post, bodies))
    rows = system.wait_terminal([body["request_id"] for _, body in answers], timeout=120)
    states = Counter(row.state for row in rows.values())
    assert states == {"published": 3, "limited": 47}

    # both workers were in the group: the partitions were shared, not all on one worker
    def both_assigned() -> bool:
        logs = [(system.root / f"{name}.log").read_text() for name in ("worker", "worker-b")]
        return all(
            "-requests', partition=" in log.split("newly assigned", 1)[-1]
            for log in logs
            if "newly assigned" in log
        ) and all("newly assigned" in log for log in logs)

    wait_until(both_assigned, 30, what="both workers holding partitions")


NO_GRACE = {
    "generation_deadline_seconds": "8",
    "publish_deadline_seconds": "8",
    "max_wait_seconds": "300",  # a generation's deadline is its queue wait and its call
    "rebalance_grace_seconds": "300",
}


def projectors_holding(bootstrap: str, group: str) -> int:
    """How many members of the projector ``group`` hold partitions, as its coordinator says it
    (none while it rebalances)."""
    state, members = described_group(bootstrap, group)
    if state != "Stable":
        return 0
    return sum(
        1 for member in members if ConsumerProtocolMemberAssignment.decode(member[4]).partitions()
    )


def calling_on_both_workers(system: System) -> tuple[threading.Thread, list]:
    """Both workers' generators holding some of [generate], then 64 slow webhooks (one OpenAI
    key per four people: the targets spread over both), until worker-b has calls in flight."""
    generate = f"{system.app_id}-generate"

    def generate_shared() -> bool:  # each generator holds some of [generate], none both
        held = []
        for name in ("worker", "worker-b"):
            status, text = http("GET", f"{system.executors_url(name)}/metrics")
            held.append(set(consumer_lags(text if status == 200 else "", generate)))
        return all(held) and not held[0] & held[1]

    for name in ("worker", "worker-b"):  # both serving (the first may start after the second)
        system.wait_ready(name)
    wait_until(generate_shared, 120, what="both workers' generators holding partitions")
    # and both projectors in their group: these tests are of the executors. (A worker killed
    # while its projector's first join was pending, and started again within the session,
    # left the projector group rebalancing for minutes, the projection these tests read
    # stalled: ``streams.kafka_join``, and test_projector_group.py's test of it.)
    group = f"{system.app_id}-projector"
    bootstrap = system.env["TALKSTREAM_KAFKA_BOOTSTRAP"]
    wait_until(
        lambda: projectors_holding(bootstrap, group) == 2,
        120,
        0.5,
        what="both projectors in their group",
    )
    system.openai("POST", "/_control", {"latency_seconds": 3})
    bodies = [
        seed_params(f"back{p}@example.com", openai_key=f"sk-test-openai-{p // 4:04d}")
        for p in range(64)
    ]
    thread, answers = post_in_background(system, bodies)

    def b_calling() -> bool:
        status, text = http("GET", f"{system.executors_url('worker-b')}/metrics")
        calls = [
            sample.value
            for sample in samples(text if status == 200 else "", "talkstream_in_flight")
            if sample.labels.get("executor") == "generator"
        ]
        return bool(calls) and calls[0] >= 4

    wait_until(b_calling, 120, what="worker-b's generator calling")
    return thread, answers


def published_with_lost_attempts(system: System, thread: threading.Thread, answers: list) -> None:
    """Every request published within minutes of waits shorter than any deadline or grace, and
    some of them after the ledger was told their attempt was lost."""
    thread.join(timeout=120)
    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=150)
    assert {row.state for row in rows.values()} == {"published"}
    lost = [
        t.cause
        for request_id in ids
        for t in system.projection.transitions(request_id)
        if "lost (its worker stopped before it ended)" in (t.cause or "")
    ]
    assert lost, "the ledger was told what the killed worker lost"


def test_a_worker_back_at_once_tells_the_ledger_what_it_lost_not_its_deadline(make_system) -> None:
    """Static membership: a worker killed and started again within the session timeout takes
    its partitions straight back and nothing rebalances, so the deadline index of the other
    worker (the ledger of half the people whose calls it lost) gives them no grace. The
    restarted executors read their partitions' marks and tell the ledger at once which attempts
    the previous run lost: every request ends within minutes of waits shorter than any
    deadline (the queue wait alone may be 300 s here)."""
    system = make_system(session_timeout_seconds="60", **NO_GRACE)
    system.start_worker("worker-b")
    thread, answers = calling_on_both_workers(system)
    system.kill_with_executors("worker-b")  # its calls in flight and queued commands lost
    system.start_worker("worker-b")
    published_with_lost_attempts(system, thread, answers)
    log = (system.root / "worker-b.log").read_text(errors="replace")
    assert "previous run and not reported; telling the ledger they were lost" in log
    assert "attempts of the previous run told lost" in log  # each range to its end


def test_a_worker_gone_for_good_the_one_taking_its_executors_partitions_tells_what_it_lost(
    make_system,
) -> None:
    """The executors' groups rebalance apart from the ledger's (a dead worker back within its
    session timeout gets its ledger partitions straight back, its executors' may have moved
    meanwhile): the worker that takes a dead one's executor partitions reads its marks and
    tells the ledger what it lost, rather than leave it to a rebalance grace or a deadline
    (300 s here)."""
    system = make_system(session_timeout_seconds="6", **NO_GRACE)
    system.start_worker("worker-b")
    thread, answers = calling_on_both_workers(system)
    system.kill_with_executors("worker-b")  # not started again
    published_with_lost_attempts(system, thread, answers)
    log = (system.root / "worker.log").read_text(errors="replace")
    assert "were taken by worker-b" in log and "telling the ledger they were lost" in log


def test_a_worker_joining_repeats_no_call_that_is_running(make_system) -> None:
    """A rebalance in which no worker dies (a second one joins, as a scale-out or a deploy
    does) loses no work: the calls running on the first worker finish there and report, its
    queued commands of the partitions it gives up are handed over. The ledger used to give
    all work issued before a rebalance 30 s more (the rebalance grace) and re-issue what was
    still unanswered then: every slow call running through a rebalance was made (and billed)
    twice, and an attempt of it spent. Only a dead worker loses work, and whoever takes its
    executors' partitions tells the ledger what it lost (the tests above)."""
    system = make_system(openai_timeout_seconds="120")
    system.openai("POST", "/_control", {"latency_seconds": 60})  # longer than any grace
    bodies = [
        seed_params(f"join{p}@example.com", openai_key=f"sk-test-openai-join{p:02d}")
        for p in range(12)
    ]
    thread, answers = post_in_background(system, bodies)
    wait_until(
        lambda: system.openai("GET", "/_stats")["in_flight"] == 12, 60, what="every call running"
    )
    system.start_worker("worker-b")  # the ledger's and the executors' groups rebalance
    system.wait_ready("worker-b")
    thread.join(timeout=60)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=150)
    assert {row.state for row in rows.values()} == {"published"}
    assert [row.attempts for row in rows.values()] == [1] * 12
    assert system.openai("GET", "/_stats")["calls"] == 12
    log = (system.root / "worker-b.log").read_text(errors="replace")
    assert "-requests', partition=" in log.split("newly assigned", 1)[-1]  # it took a share


def test_a_worker_given_its_partition_back_by_a_rebalance_marks_its_running_calls(
    make_system,
) -> None:
    """A rebalance revokes every partition of the executors' groups and may give a worker back
    the one it was calling for. Its calls still running were left out of the marks it committed
    after that (the hand-over's mark says nothing is unreported, for the next owner), so a
    crash before they ended lost them to their deadline (queue wait and call: 308 s here, 17
    minutes by default), though its next run came back at once: the marks list them again, and
    the next run tells the ledger they were lost."""
    system = make_system(
        session_timeout_seconds="60",
        generation_deadline_seconds="8",
        max_wait_seconds="300",
        openai_timeout_seconds="120",
    )
    system.openai("POST", "/_control", {"latency_seconds": 60})
    openai_key = "sk-test-openai-0002"  # one key: one partition of [generate], 3 of 4, which
    # the first generator in the group's order by member id (``worker-b@`` before ``worker@``)
    # does not get: it stays with ``worker``
    thread, answers = six_calls_running(system, openai_key, "kept")
    generate = f"{system.app_id}-generate"
    key = str(partition_of(4)(key_fingerprint(openai_key).encode()))
    system.start_worker("worker-b")
    system.wait_ready("worker-b")

    def shared() -> dict[str, set[str]] | None:  # each generator holds some, none both
        held = {}
        for name in ("worker", "worker-b"):
            status, text = http("GET", f"{system.executors_url(name)}/metrics")
            held[name] = set(consumer_lags(text if status == 200 else "", generate))
        return held if all(held.values()) and not held["worker"] & held["worker-b"] else None

    held = poll(shared, 120)
    assert held is not None, "both workers' generators holding partitions"
    assert key in held["worker"], "the rebalance gave the calling worker its partition back"

    def marked_its_own() -> bool:  # the generator's loop committed the calls as its own
        commits = group_commits(system.kafka.bootstrap, f"{system.app_id}-generator")
        _, metadata = commits.get(int(key), (0, ""))
        mark = Mark.parse(metadata)
        return mark is not None and sum(b - a for a, b in mark.unreported or ()) == 6

    wait_until(marked_its_own, 30, what="the partition's mark listing its six calls again")
    system.kill_with_executors("worker")  # its six calls still running
    system.start_worker("worker")  # at once: the same partitions, no rebalance
    system.openai("POST", "/_control", {"latency_seconds": 0.05})
    thread.join(timeout=60)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=120)
    assert {row.state for row in rows.values()} == {"published"}
    assert [row.attempts for row in rows.values()] == [2] * 6
    log = (system.root / "worker.log").read_text(errors="replace")
    assert "6 attempts of the previous run told lost" in log


def _key_of_partition(partition: int) -> str:
    """An OpenAI key whose calls [generate] (4 partitions) holds in ``partition``."""
    of = partition_of(4)
    return next(
        key
        for key in (f"sk-test-openai-gone{n:04d}" for n in range(1000))
        if of(key_fingerprint(key).encode()) == partition
    )


@pytest.mark.parametrize("restarted", [False, True], ids=["gone", "back-at-once"])
def test_a_worker_that_gave_its_partition_up_then_died_has_its_running_calls_told_lost(
    make_system, restarted: bool
) -> None:
    """A worker giving a partition up in a rebalance finishes the calls of it that are running
    (no call made twice), and its hand-over mark said it left nothing unreported: killed
    before those calls ended, they were re-issued only at their deadline (queue wait and
    call: 308 s here, 17 minutes by default), whether it stayed dead or came back at once
    (its partitions are not that one). The hand-over mark lists them with the run calling
    them; the partition's new owner tells the ledger they were lost once that run is no
    longer in the executor's group (gone after the session timeout, or replaced by the
    worker's next run)."""
    system = make_system(
        session_timeout_seconds="60" if restarted else "6",
        generation_deadline_seconds="8",
        max_wait_seconds="300",
        openai_timeout_seconds="120",
    )
    system.openai("POST", "/_control", {"latency_seconds": 60})
    # one key: partition 0 of [generate], which the first generator in the group's order by
    # member id (``worker-b@`` before ``worker@``) gets: it moves to worker-b
    openai_key = _key_of_partition(0)
    thread, answers = six_calls_running(system, openai_key, "moved")
    generate = f"{system.app_id}-generate"
    system.start_worker("worker-b")
    system.wait_ready("worker-b")

    def moved() -> bool:  # worker-b's generator holds the key's partition, worker's not
        held = {}
        for name in ("worker", "worker-b"):
            status, text = http("GET", f"{system.executors_url(name)}/metrics")
            held[name] = set(consumer_lags(text if status == 200 else "", generate))
        return "0" in held["worker-b"] and bool(held["worker"]) and "0" not in held["worker"]

    wait_until(moved, 120, what="the key's partition moved to worker-b")
    assert system.openai("GET", "/_stats")["calls"] == 6, "no call made twice by the rebalance"
    system.kill("worker")  # its six calls still running
    if restarted:
        system.start_worker("worker")  # at once: its own partitions back, no rebalance
    system.openai("POST", "/_control", {"latency_seconds": 0.05})
    thread.join(timeout=60)
    ids = [body["request_id"] for _, body in answers]
    rows = system.wait_terminal(ids, timeout=120)  # far below the deadline (308 s)
    assert {row.state for row in rows.values()} == {"published"}
    odd = [rid for rid, row in rows.items() if row.attempts != 2]  # (once, under load: one 1)
    assert not odd, f"attempts {[row.attempts for row in rows.values()]}:\n{system.trace(odd)}"
    events = [e for e in system.talkable("GET", "/_events") if e["email"].startswith("moved")]
    assert sorted(e["email"] for e in events) == sorted(f"moved{p}@example.com" for p in range(6))
    log = (system.root / "worker-b.log").read_text(errors="replace")
    assert "6 offsets between" in log and "were still being called by worker@" in log
    assert "6 attempts of the previous run told lost" in log


BLAST = 400  # a campaign's webhooks, one person each, on one paced key
PACED_KEY = "sk-blast-paced-5rps"


def _executors_child(worker: int) -> int:
    """The pid of ``worker``'s executors child (``TALKSTREAM_EXECUTORS=process``)."""
    [child] = [
        pid
        for pid in _children(worker)
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2:] == [b"executors", b""]
    ]
    return child


@pytest.mark.parametrize(
    ("killed", "quick"),
    [("worker", False), ("executors child", False), ("worker", True)],
    ids=["worker", "executors child", "between a quick key's"],
)
def test_a_worker_killed_under_a_blast_tells_the_ledger_every_queued_command_it_lost(
    make_system, killed: str, quick: bool
) -> None:
    """A campaign's blast on one OpenAI key paced at 5 calls a second: hundreds of its
    commands wait in the generator's queue, taken (committed) and not reported, in one run of
    offsets of the key's partition. A mark listed only the oldest 256 of them: the worker
    killed outright (SIGKILL) and started again at once, or its executors' child killed so
    (``TALKSTREAM_EXECUTORS=process``: the OOM killer's pick; the worker starts it again), the
    next run told the ledger those were lost, and every command past them waited for its
    deadline, the queue wait and the call (17 minutes by default, as here), though one range
    named them all. Every command queued at the kill is told lost at once now, and every
    request is published minutes before any deadline, none called more often than the ledger
    issued it (a call reported before the kill is not made again). (A worker killed outright
    with its executors in a child has the kernel stop the child, which hands its queued
    commands back: no mark is read for them.) ``quick``: each of the blast's webhooks
    followed by one on a key unpaced whose commands share its partition: those end at once,
    and the blast's queued offsets are one range each, hundreds: a mark's 32 ranges named the
    oldest 32, the rest waited for their deadline. The gaps of the calls reported by their
    result are joined now (the ledger ignores news of their loss: it has their result)."""
    executors = "process" if killed == "executors child" else "worker"
    system = make_system(session_timeout_seconds="60", executors=executors)
    system.openai(
        "POST", "/_control", {"latency_seconds": 0.05, "key_limits": {PACED_KEY: {"rpm": 300}}}
    )
    partition = partition_of(4)(key_fingerprint(PACED_KEY).encode())
    keys = [PACED_KEY, _key_of_partition(partition)] if quick else [PACED_KEY]
    emails, bodies, paced = [], [], set()
    for i in range(BLAST):
        for k, key in enumerate(keys):
            emails.append(email := f"queued{i}-{k}@example.com")
            bodies.append(seed_params(email, openai_key=key))
            paced |= {email} if key == PACED_KEY else set()
    for body in bodies:  # OpenAI's end-user id, passed through: the stand-in's tag of each call
        body["openai"]["user"] = body["email"]
    thread, answers = post_in_background(system, bodies)

    def taken() -> Mark | None:  # the mark of the key's partition, once it took the blast
        try:
            commits = group_commits(system.kafka.bootstrap, f"{system.app_id}-generator")
        except KafkaError:  # (its group not made yet)
            return None
        offset, metadata = commits.get(partition, (0, ""))
        return Mark.parse(metadata) if offset >= len(emails) else None

    first = wait_until(taken, 120, 0.2, what="the generator to take the whole blast")
    # and a call reported since: the mark its commit then made is of the commands not
    # reported (the one of the batch taken named the batch whole, however long)
    wait_until(
        lambda: (mark := taken()) is not None and mark.oldest > first.oldest,
        60,
        0.2,
        what="a commit after a report",
    )
    if killed == "worker":
        system.kill("worker")  # SIGKILL: its queued commands and its calls running are lost
    else:
        child = _executors_child(system.procs["worker"].pid)
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not _alive(child), 60, what="the executors' child to end")
    called = {c["user"] for c in system.openai("GET", "/_calls")}  # made or begun
    queued = paced - called
    assert len(queued) > 300, f"only {len(queued)} commands queued at the kill"
    system.openai("POST", "/_control", {"key_limits": {}})  # the rest at once: a short test
    if killed == "worker":
        system.start_worker()  # the same name: its partitions straight back, no rebalance
    thread.join(timeout=120)
    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    person = dict(zip(ids, emails, strict=True))

    def told_lost() -> set[str]:  # the people whose attempt the ledger was told was lost
        return {
            person[v["request_id"]]
            for v in values_of(system, "requests")
            if v.get("kind") == "deadline_expired" and v.get("lost") and v["request_id"] in person
        }

    every_one = poll(lambda: queued <= told_lost(), 90, 0.5)  # seconds after the restart
    assert every_one, (
        f"{len(queued - told_lost())} of the {len(queued)} commands queued at the kill not told "
        "lost: left to their deadline (17 minutes)"
    )
    rows = system.wait_terminal(ids, timeout=120)  # far below the deadline (1020 s)
    assert Counter(row.state for row in rows.values()) == {"published": len(emails)}
    events = [e for e in system.talkable("GET", "/_events") if e["email"].startswith("queued")]
    assert Counter(e["event_number"] for e in events) == Counter(
        {f"generate_text_complete-{rid}": 1 for rid in ids}
    )
    # no request called more often than [generate] holds its commands: a call reported
    # before the kill is not made again (told lost, the ledger ignores it: it has its result)
    calls = Counter(c["user"] for c in system.openai("GET", "/_calls") if c["status"] == 200)
    over = calls - issued_by_person(system, "generate", person)
    assert over == Counter(), f"called more often than issued: {over}"
    log = (system.root / "worker.log").read_text(errors="replace")
    told = [int(n) for n in re.findall(r"(\d+) attempts of the previous run told lost", log)]
    assert told and max(told) >= len(queued), told
