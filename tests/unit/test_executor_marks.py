"""What an executor's commits say besides the offset (its mark), and how it keeps the oldest
offset it took and has not reported: what its next run tells the ledger was lost."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    OffsetMetadataTooLargeError,
)

from models.events import DeadlineExpired, GenerateText
from streams.agents import commits as commits_module
from streams.agents import executors, marks
from streams.agents.executors import Executor, ExecutorConfig
from streams.agents.marks import (
    BRIDGED_RANGES,
    MARK_BYTES,
    MARK_RANGES,
    Mark,
    Running,
    Unreported,
)
from streams.agents.work import Generate
from streams.codecs import decode_requests, encode
from streams.errors import UpstreamError
from streams.logs import REPEATED
from streams.observability import ready
from streams.runtime import SystemClock, Topics
from streams.upstream.scheduler import Outcome
from tests.unit.domain_builders import Ledger, received

TP = TopicPartition("generate", 0)
OTHER = TopicPartition("generate", 1)
MANY = 1000  # offsets not reported: more than a mark listed before (its oldest 256)


def test_a_mark_reads_back_as_written_and_anything_else_is_no_mark() -> None:
    mark = Mark("talkstream-worker-generator", "0123abcd", 41)
    assert Mark.parse(mark.encode()) == mark
    listed = Mark("talkstream-worker-generator", "0123abcd", 41, ((41, 42), (50, 60)))
    assert Mark.parse(listed.encode()) == listed
    for metadata in ("", "{}", "not json", '{"instance": "x", "run": "y"}', "[1, 2]", "null",
                     '{"instance": "x", "run": "y", "oldest": 1, "unreported": [1]}'):  # fmt: skip
        assert Mark.parse(metadata) is None, metadata
    assert len(mark.encode()) < 200  # far below the broker's offset.metadata.max.bytes
    far = 10**15
    ranges = tuple((far + 2 * i, far + 2 * i + 1) for i in range(MARK_RANGES))
    widest = Mark("talkstream-worker-generator", "0123abcd", far, ranges)
    assert len(widest.encode()) < 2048  # the broker's default limit is 4096


def test_a_mark_lists_the_offsets_left_unreported_or_names_only_the_oldest() -> None:
    listed = Mark("i", "r", 10, ((10, 11), (14, 16)))
    assert [o for o in range(8, 20) if listed.lost(o)] == [10, 14, 15]
    oldest_only = Mark("i", "r", 10)  # an earlier version's mark (too many to list, then)
    assert [o for o in range(8, 14) if oldest_only.lost(o)] == [10, 11, 12, 13]


def test_the_unreported_offsets_are_listed_as_ranges_while_they_are_few() -> None:
    unreported = Unreported()
    assert unreported.ranges(TP) == ()
    assert unreported.ranges(TP, range(5, 9)) == ((5, 9),)
    for offset in (5, 6, 7, 8):
        unreported.took(TP, offset, f"r{offset}", 1)
    unreported.reported("r6", 1)
    assert unreported.ranges(TP) == ((5, 6), (7, 9))
    assert unreported.ranges(TP, range(9, 12)) == ((5, 6), (7, 12)), "a batch joins its run"
    assert unreported.ranges(TP, range(20, 22)) == ((5, 6), (7, 9), (20, 22))

    scattered = Unreported()
    for offset in range(0, 2 * MARK_RANGES, 2):
        scattered.took(TP, offset, f"s{offset}", 1)
    assert scattered.listing(TP) == (tuple((o, o + 1) for o in range(0, 2 * MARK_RANGES, 2)), True)
    oldest = tuple((o, o + 1) for o in range(0, 2 * MARK_RANGES - 2, 2))
    assert scattered.listing(TP, range(1000, 1001)) == ((*oldest, (1000, 1001)), False), (
        "one range too many: the oldest, and the batch taken"
    )
    assert scattered.ranges(TP, range(1000, 1001)) == (*oldest, (1000, 1001))

    many = Unreported()  # a blast queued for a paced key: one run of offsets, however long
    for offset in range(MANY + 1):
        many.took(TP, offset, f"m{offset}", 1)
    assert many.listing(TP) == (((0, MANY + 1),), True), "every offset: one range names them"
    many.reported("m0", 1)
    assert many.listing(TP) == (((1, MANY + 1),), True)
    many.reported("m5", 1)
    assert many.listing(TP, range(MANY + 1, MANY + 9)) == (((1, 5), (6, MANY + 9)), True)


def test_ranges_a_resulted_gap_parts_are_joined_past_the_most_a_mark_lists() -> None:
    """A paced key's commands queued in a partition they share with a quick key's, which end
    between them: the offsets not reported are as many ranges as commands. Past the most a
    mark lists, the gaps whose every offset was reported by its result (Kafka acknowledged it
    in [requests], before any news of its loss: the ledger ignores the news) are joined, the
    shortest first, so that the mark names every command not reported; a gap holding a
    command forwarded (reported here, its result to come from where it was called) is never
    joined, nor one holding an offset this run did not report by a result."""
    unreported = Unreported()
    for offset in range(4 * MARK_RANGES):
        unreported.took(TP, offset, f"r{offset}", 1)
    forwarded = 2 * MARK_RANGES + 1
    for offset in range(1, 4 * MARK_RANGES, 2):  # the quick key's, ended
        unreported.reported(f"r{offset}", 1, resulted=offset != forwarded)
    unreported.reported("r3", 1)  # (again: nothing more)
    ranges, whole = unreported.listing(TP)
    named = {o for a, b in ranges for o in range(a, b)}
    paced = set(range(0, 4 * MARK_RANGES, 2))
    assert whole and len(ranges) <= MARK_RANGES and paced <= named, ranges
    assert forwarded not in named, "a forward named lost: called twice"
    singles = ((o, o + 1) for o in range(forwarded + 1, 4 * MARK_RANGES, 2))
    assert ranges == ((0, forwarded), *singles), "as many joined as it takes, no more"

    few = Unreported()  # within the most a mark lists: as they are, none joined
    for offset in range(6):
        few.took(TP, offset, f"f{offset}", 1)
    few.reported("f1", 1, resulted=True)
    assert few.listing(TP) == (((0, 1), (2, 6)), True)

    blocked = Unreported()  # gaps of offsets not reported by a result: the oldest ranges
    for offset in range(0, 4 * MARK_RANGES, 2):
        blocked.took(TP, offset, f"b{offset}", 1)
    ranges, whole = blocked.listing(TP, range(1000, 1001))
    assert not whole and ranges == (*((o, o + 1) for o in range(0, 2 * MARK_RANGES - 2, 2)),
                                    (1000, 1001))  # fmt: skip


def test_a_listing_reads_the_oldest_ranges_it_may_join_and_leaves_the_rest_to_the_deadlines() -> (
    None
):
    """Each commit lists its marks: a paced key's blast parted by a quicker key's calls into
    thousands of ranges would have each commit read and join all of them (tens of ms a commit
    at 20,000 commands queued). Past BRIDGED_RANGES ranges those after are not read: the mark
    names the oldest, joined, and the batch being taken; the rest wait for their deadline."""
    unreported = Unreported()
    paced = range(0, 2 * 2 * BRIDGED_RANGES, 2)  # twice as many ranges as it reads
    for offset in range(2 * 2 * BRIDGED_RANGES):
        unreported.took(TP, offset, f"r{offset}", 1)
    for offset in range(1, 2 * 2 * BRIDGED_RANGES, 2):  # the quick key's, ended between
        unreported.reported(f"r{offset}", 1, resulted=True)
    taking = range(10**6, 10**6 + 3)
    ranges, whole = unreported.listing(TP, taking)
    assert not whole, "the ranges past those it reads are not named: not the whole"
    assert ranges[-1] == (taking.start, taking.stop), "the batch being taken is named"
    named = {o for a, b in ranges[:-1] for o in range(a, b)}
    read = set(paced[:BRIDGED_RANGES])
    assert read <= named, "the oldest it read are named, their gaps joined"
    assert not named & set(paced[BRIDGED_RANGES:]), "those past it are not read"
    assert len(ranges) <= MARK_RANGES


@pytest.mark.parametrize("seed", range(20))
def test_runs_of_offsets_are_the_consecutive_ones_found_by_galloping(seed: int) -> None:
    """marks._runs finds each run's end by galloping and bisection: the same runs as reading
    every offset would, for runs of any length, and at most ``most`` of them."""
    import random

    chance = random.Random(seed)
    offsets: list[int] = []
    at = chance.randrange(100)
    for _ in range(chance.randrange(1, 60)):
        length = chance.choice((1, 1, 2, 3, chance.randrange(1, 400)))
        offsets.extend(range(at, at + length))
        at += length + chance.randrange(1, 5)
    expected: list[tuple[int, int]] = []
    for offset in offsets:
        if expected and expected[-1][1] == offset:
            expected[-1] = (expected[-1][0], offset + 1)
        else:
            expected.append((offset, offset + 1))
    assert marks._runs(offsets, len(offsets) + 1) == (expected, True)
    most = chance.randrange(1, len(expected) + 1)
    assert marks._runs(offsets, most) == (expected[:most], most == len(expected))
    assert marks._runs([], 5) == ([], True)


def test_the_offsets_resulted_are_kept_only_while_a_gap_may_hold_them() -> None:
    unreported = Unreported()
    unreported.took(TP, 0, "hung", 1)  # a call that does not end: the oldest for a while
    many = 2 * marks.PRUNED_LEAST + 1
    for offset in range(1, many + 1):
        unreported.took(TP, offset, f"q{offset}", 1)
        unreported.reported(f"q{offset}", 1, resulted=True)
    assert len(unreported._resulted[TP]) == many, "each above the oldest: kept"
    unreported.reported("hung", 1, resulted=True)
    assert TP not in unreported._resulted, "none left to part: none kept"
    unreported.took(TP, many + 1, "next", 1)
    assert unreported.listing(TP) == (((many + 1, many + 2),), True)
    unreported.forget({TP})
    assert unreported._resulted == {} and unreported.ranges(TP) == ()


def test_the_oldest_unreported_offset_follows_the_reports() -> None:
    unreported = Unreported()
    assert unreported.oldest(TP, 7) == 7  # nothing taken: the offset committed
    for offset, request_id in ((10, "a"), (11, "b"), (12, "c")):
        unreported.took(TP, offset, request_id, 1)
    unreported.took(OTHER, 3, "d", 1)
    assert unreported.oldest(TP, 13) == 10
    unreported.reported("b", 1)
    assert unreported.oldest(TP, 13) == 10
    unreported.reported("a", 1)
    assert unreported.oldest(TP, 13) == 12
    unreported.reported("c", 1)
    assert unreported.oldest(TP, 13) == 13
    assert unreported.oldest(OTHER, 4) == 3


def test_offsets_stay_in_order_even_if_a_partition_is_read_again_from_further_back() -> None:
    unreported = Unreported()
    for offset, request_id in ((20, "a"), (21, "b"), (10, "c"), (21, "b")):
        unreported.took(TP, offset, request_id, 1)
    assert unreported.oldest(TP, 22) == 10
    assert unreported.ranges(TP) == ((10, 11), (20, 22))
    unreported.reported("c", 1)
    assert unreported.oldest(TP, 22) == 20


def test_a_report_settles_the_earlier_attempts_of_its_request_not_the_later_ones() -> None:
    unreported = Unreported()
    unreported.took(TP, 10, "a", 1)  # queued, then taken over by attempt 2 (one report)
    unreported.took(TP, 20, "a", 2)
    unreported.reported("a", 2)
    assert unreported.oldest(TP, 21) == 21

    unreported.took(TP, 30, "b", 1)  # attempt 1 still calling when attempt 2 arrives
    unreported.took(TP, 40, "b", 2)
    unreported.reported("b", 1)
    assert unreported.oldest(TP, 41) == 40, "attempt 2 is still to report"
    unreported.reported("b", 2)
    assert unreported.oldest(TP, 41) == 41


def test_revoked_partitions_are_forgotten_and_their_late_reports_change_nothing() -> None:
    unreported = Unreported()
    unreported.took(TP, 10, "a", 1)
    unreported.took(OTHER, 5, "b", 1)
    unreported.forget({TP})
    assert unreported.oldest(TP, 11) == 11
    unreported.reported("a", 1)  # a call of the revoked partition that ran on, here
    assert unreported.oldest(TP, 11) == 11
    assert unreported.oldest(OTHER, 6) == 5


class Requests:
    """The [requests] topic as the executor sends to it: every send acknowledged, or none."""

    def __init__(self, *, fail: bool = False) -> None:
        self.sent: list[Any] = []
        self.fail = fail

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        if self.fail:
            raise ConnectionError("the broker went away")
        self.sent.append(decode_requests(value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def generator(
    requests: Requests,
    *,
    watch_ms: int | None = None,
    clock: Any = None,
    generate: Any = None,
    scheduler: Any = None,
    dead_letters: Any = None,
) -> Executor:
    """A generator executor sending its results to ``requests`` and what it hands back to
    ``generate``, its commands queued in ``scheduler``."""
    topics = Topics(requests=requests, generate=generate, completions=None, lifecycle=None,
                    deadletter=None)  # fmt: skip
    config = ExecutorConfig("generator", "generate", "g", "worker-generator", {}, watch_ms)
    work = Generate(chat=None, secrets=None)  # type: ignore[arg-type]
    return Executor(config, scheduler or SimpleNamespace(), work, topics=topics,
                    dead_letters=dead_letters, clock=clock or SystemClock())  # fmt: skip


def command(request_id: str) -> bytes:
    [generate] = Ledger().send(received(request_id)).commands
    assert isinstance(generate, GenerateText)
    return encode(generate)


def records(*values: tuple[int, bytes]) -> list[Any]:
    return [SimpleNamespace(offset=offset, value=value) for offset, value in values]


def test_a_lost_range_is_told_to_the_ledger_and_what_follows_it_is_taken() -> None:
    requests = Requests()
    executor = generator(requests)
    executor.lost.reading[TP] = (3, Mark("i", "r", 0))  # its previous run took 0-2, reported none
    batch = {TP: records((0, command("a")), (1, b"not a command"), (2, command("b")),
                         (3, command("c")))}  # fmt: skip
    ended = asyncio.run(executor.lost.past_lost(batch))
    assert ended == {TP: 3} and [r.offset for r in batch[TP]] == [3]
    assert all(isinstance(m, DeadlineExpired) and m.lost for m in requests.sent)
    assert [(m.request_id, m.attempt, m.stage) for m in requests.sent] == [
        ("a", 1, "generating"),
        ("b", 1, "generating"),
    ]
    assert executor.lost.reading == {}


def test_a_lost_range_longer_than_a_batch_is_not_committed_until_its_end() -> None:
    requests = Requests()
    executor = generator(requests)
    executor.lost.reading[TP] = (10, Mark("i", "r", 4))
    batch = {TP: records((4, command("a")), (5, command("b")))}
    assert asyncio.run(executor.lost.past_lost(batch)) == {}
    assert batch == {} and executor.lost.reading == {TP: (10, Mark("i", "r", 4))}
    assert len(requests.sent) == 2
    assert executor.commits.marks({}, {}) == {}, "nothing of the partition is committed meanwhile"


def test_a_lost_range_the_ledger_cannot_be_told_of_is_left_to_the_deadlines() -> None:
    executor = generator(Requests(fail=True))
    executor.lost.reading[TP] = (2, Mark("i", "r", 0))
    batch = {TP: records((0, command("a")), (1, command("b")), (2, command("c")))}
    assert asyncio.run(executor.lost.past_lost(batch)) == {TP: 2}  # no exception: it goes on
    assert [r.offset for r in batch[TP]] == [2]


class Revoking(Requests):
    """[requests], sent to while the group rebalances: ``during`` runs at the first send."""

    def __init__(self, during: Any) -> None:
        super().__init__()
        self.during = during

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        during, self.during = self.during, lambda: None
        during()
        return await super().send(key=key, value=value)


@pytest.mark.parametrize("back", [False, True], ids=["revoked", "revoked-and-read-again"])
def test_a_lost_range_whose_partition_is_revoked_while_it_is_told_is_left_to_its_owner(
    back: bool,
) -> None:
    """A revoke (a member's session ran out) while the ledger is told of a lost range: the
    partition is its new owner's, nothing of it ended here (no commit); one assigned back at
    once and read again keeps its new range. (A worker under load crashed on it: KeyError.)"""
    again = (9, Mark("i", "r2", 1))

    def rebalance() -> None:
        executor.lost.forget(TP)
        if back:
            executor.lost.reading[TP] = again

    executor = generator(Revoking(rebalance))
    executor.lost.reading[TP] = (3, Mark("i", "r", 0))
    executor.lost.reading[OTHER] = (1, Mark("i", "r", 0))
    batch = {TP: records(*((o, command(f"r{o}")) for o in range(4))),
             OTHER: records((0, command("e")), (1, command("f")))}  # fmt: skip
    ended = asyncio.run(executor.lost.past_lost(batch))
    assert ended == {OTHER: 1}, "the other partition's range ended all the same"
    assert [r.offset for r in batch[OTHER]] == [1] and TP not in batch
    assert executor.lost.reading == ({TP: again} if back else {})


def test_only_the_attempts_a_mark_lists_are_told_lost() -> None:
    requests = Requests()
    executor = generator(requests)
    executor.lost.reading[TP] = (6, Mark("i", "r", 1, ((1, 2), (4, 5))))  # 2, 3 and 5 were reported
    batch = {TP: records(*((o, command(f"r{o}")) for o in range(1, 8)))}
    assert asyncio.run(executor.lost.past_lost(batch)) == {TP: 6}
    assert [m.request_id for m in requests.sent] == ["r1", "r4"]
    assert [r.offset for r in batch[TP]] == [6, 7]


def test_a_commit_marks_what_is_unreported_and_only_when_it_changed() -> None:
    executor = generator(Requests())
    mark = executor.commits.mark
    marks = executor.commits.marks
    assert marks({TP: 5}, {TP: 3}) == {TP: (5, mark(3, ((3, 5),)))}  # the batch 3-4
    executor.taken[TP] = 5
    executor.commits.marked[TP] = mark(3, ((3, 5),))
    executor._unreported.took(TP, 3, "a", 1)
    executor._unreported.took(TP, 4, "b", 1)
    assert marks({}, {}) == {}
    executor._unreported.reported("a", 1)
    assert marks({}, {}) == {TP: (5, mark(4, ((4, 5),)))}
    executor.commits.marked[TP] = mark(4, ((4, 5),))
    executor._unreported.reported("b", 1)
    assert marks({}, {}) == {TP: (5, mark(5, ()))}
    executor.commits.marked[TP] = mark(5, ())

    executor._unreported.took(TP, 5, "c", 1)  # a hung call, then later batches reported
    executor.taken[TP] = 6
    assert marks({TP: 9}, {TP: 6}) == {TP: (9, mark(5, ((5, 9),)))}
    for offset, request_id in ((6, "d"), (7, "e"), (8, "f")):
        executor._unreported.took(TP, offset, request_id, 1)
    executor.taken[TP] = 9
    executor.commits.marked[TP] = mark(5, ((5, 9),))
    executor._unreported.reported("e", 1)  # the oldest stays; the mark still changed
    assert marks({}, {}) == {TP: (9, mark(5, ((5, 7), (8, 9))))}


class Marked:
    """An executor's consumer as ``HandOver.recover`` uses it: the marks its group committed
    last, and where it was told to read from."""

    def __init__(self, committed: dict[TopicPartition, tuple[int, Mark]]) -> None:
        self._coordinator = self
        self._committed = committed
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def fetch_committed_offsets(self, partitions: list[TopicPartition]) -> dict[Any, Any]:
        return {
            tp: SimpleNamespace(offset=offset, metadata=mark.encode())
            for tp, (offset, mark) in self._committed.items()
            if tp in partitions
        }

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_what_any_other_run_left_unreported_is_read_again_to_be_told_lost() -> None:
    """Its own previous run's (a restart) and another worker's (one that died: its executors'
    partitions moved here, while the ledger's may not have moved at all); a run that handed
    its partitions over committed that it left nothing, and this run's own marks are its own."""
    executor = generator(Requests())
    own = executor.config.instance
    third = TopicPartition("generate", 2)
    mine = TopicPartition("generate", 3)
    committed = {
        TP: (10, Mark(own, "restarted", 4, ((4, 6),))),
        OTHER: (7, Mark("worker-b-generator", "died", 5)),
        third: (9, Mark("worker-b-generator", "handed-over", 9, ())),
        mine: (12, Mark(own, executor.run_id, 11, ((11, 12),))),
    }
    consumer = Marked(committed)
    executor.consumer = consumer  # type: ignore[assignment]
    asyncio.run(executor.handover.recover(executor.consumer, set(committed)))
    assert sorted(consumer.seeks) == [(TP, 4), (OTHER, 5)]
    assert executor.lost.reading == {TP: committed[TP], OTHER: committed[OTHER]}


class Generate_:
    """The [generate] topic as a hand-back sends to it: the commands of ``refused`` are not
    taken (the producer refused them: surely not written)."""

    def __init__(self, refused: set[bytes]) -> None:
        self.refused = refused
        self.sent: list[bytes] = []

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[None]:
        if key in self.refused:
            raise KafkaTimeoutError("no room in the producer's buffer")
        done = asyncio.get_running_loop().create_future()
        self.sent.append(key)
        done.set_result(None)
        return done


class Committing:
    """An executor's consumer as a hand-back uses it: what it committed."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, tuple[int, bytes]]] = []
        self._coordinator = SimpleNamespace(member_id="worker-generator-1")

    async def commit(self, offsets: dict[TopicPartition, tuple[int, bytes]]) -> None:
        self.commits.append(offsets)


def test_a_partition_whose_queued_command_could_not_be_handed_back_marks_it_lost() -> None:
    """A rebalance takes two partitions away while a command of each waits in its queue: the
    one handed back is the new owner's to take, so its partition is committed as leaving
    nothing to tell; the other, which Kafka did not take back, is committed marked as taken
    and not reported, and the new owner tells the ledger it was lost at once, rather than
    leave it to its deadline (a rebalance no longer shortens that). Both are first committed
    as leaving nothing to tell, before either is sent (``HandOver.send_back``); the one Kafka
    did not take is named by a commit after."""
    generate = Generate_(refused={b"k-lost"})
    jobs: list[Any] = []
    queue = SimpleNamespace(take_back=lambda origins: jobs)
    executor = generator(Requests(), generate=generate, scheduler=queue)
    consumer = Committing()
    executor.consumer = consumer  # type: ignore[assignment]
    for tp, offset, name in ((TP, 3, "back"), (OTHER, 7, "lost")):
        executor.taken[tp] = offset + 1
        executor._unreported.took(tp, offset, name, 1)
        executor.commits.marked[tp] = executor.commits.mark(offset, ((offset, offset + 1),))
        jobs.append(
            SimpleNamespace(key=name, attempt=1, origin=tp, record=(f"k-{name}".encode(), b"v"))
        )
    asyncio.run(executor.handover.hand_back(executor.consumer, {TP, OTHER}))
    assert generate.sent == [b"k-back"]
    assert consumer.commits == [
        {  # before the hand-back: neither is named
            TP: (4, executor.commits.mark(4, ()).encode()),
            OTHER: (8, executor.commits.mark(8, ()).encode()),
        },
        {
            TP: (4, executor.commits.mark(4, ()).encode()),
            OTHER: (8, executor.commits.mark(7, ((7, 8),)).encode()),  # told lost
        },
    ]


def test_a_hand_over_marks_lost_only_the_commands_that_could_not_be_handed_back() -> None:
    """One of a partition's queued commands could not be handed back at a revoke: the
    partition kept its whole last mark, which listed the commands handed back fine as taken
    and not reported too, so its next owner told the ledger they were lost as well, and each
    was re-issued as another attempt (an attempt spent, the copy handed back called too: a
    call billed twice). The hand-over's mark lists as lost only the one Kafka did not take,
    and the call still running here as running elsewhere, as any hand-over does."""
    generate = Generate_(refused={b"k-lost"})
    jobs: list[Any] = []
    queue = SimpleNamespace(take_back=lambda origins: jobs)
    executor = generator(Requests(), generate=generate, scheduler=queue)
    consumer = Committing()
    consumer._coordinator = SimpleNamespace(member_id="worker-generator-7")  # type: ignore[attr-defined]
    executor.consumer = consumer  # type: ignore[assignment]
    executor.taken[TP] = 9
    executor._unreported.took(TP, 4, "running", 1)  # called here, not reported yet
    for offset, name in ((5, "back"), (6, "lost"), (7, "also-back")):
        executor._unreported.took(TP, offset, name, 1)
        jobs.append(
            SimpleNamespace(key=name, attempt=1, origin=TP, record=(f"k-{name}".encode(), b"v"))
        )
    last = executor.commits.marked[TP] = executor.commits.mark(4, ((4, 8),))
    asyncio.run(executor.handover.hand_back(executor.consumer, {TP}))
    assert generate.sent == [b"k-back", b"k-also-back"]
    # what the next owner reads: the hand-over's commit, or the last one before it
    found = [Mark.parse(offsets[TP][1]) for offsets in consumer.commits if TP in offsets]
    handed = found[-1] if found else last
    assert handed is not None
    assert [o for o in range(4, 9) if handed.lost(o)] == [6], "only the one not handed back"
    [running] = handed.running
    assert (running.run, running.offsets) == (executor.run_id, ((4, 5),))


def test_a_hand_over_with_too_many_commands_not_handed_back_names_none_handed_back() -> None:
    """More commands that Kafka did not take back than a mark lists: the partition kept its
    last mark, which listed those handed back fine as not reported, and its next owner told
    the ledger they were lost while their copies were taken there (two calls). The hand-over's
    mark names the oldest of those not handed back that it can; the rest, their deadline."""
    many = MARK_RANGES + 8
    refused = {f"k-lost-{i}".encode() for i in range(many)}
    generate = Generate_(refused=refused)
    jobs: list[Any] = []
    queue = SimpleNamespace(take_back=lambda origins: jobs)
    executor = generator(Requests(), generate=generate, scheduler=queue)
    consumer = Committing()
    consumer._coordinator = SimpleNamespace(member_id="worker-generator-7")  # type: ignore[attr-defined]
    executor.consumer = consumer  # type: ignore[assignment]
    end = 10 + 2 * many
    executor.taken[TP] = end
    for i in range(many):  # lost and handed back, one after another
        for offset, name in ((10 + 2 * i, f"lost-{i}"), (11 + 2 * i, f"back-{i}")):
            executor._unreported.took(TP, offset, name, 1)
            jobs.append(SimpleNamespace(key=name, attempt=1, origin=TP,
                                        record=(f"k-{name}".encode(), b"v")))  # fmt: skip
    last = executor.commits.marked[TP] = executor.commits.mark(10, ((10, end),))
    asyncio.run(executor.handover.hand_back(executor.consumer, {TP}))
    assert len(generate.sent) == many
    found = [Mark.parse(offsets[TP][1]) for offsets in consumer.commits if TP in offsets]
    handed = found[-1] if found else last
    assert handed is not None
    named = [o for o in range(end) if handed.lost(o)]
    assert named == [10 + 2 * i for i in range(MARK_RANGES)], "the oldest not handed back"
    assert handed.running == ()


def test_a_mark_lists_the_calls_running_elsewhere_within_the_brokers_limit() -> None:
    handed = Running(
        "worker-generator", "0123abcd", "worker-generator-3f2a", ((40, 41), (43, 45)), 1
    )
    mark = Mark("worker-b-generator", "4567cdef", 50, (), (handed,))
    assert Mark.parse(mark.encode()) == mark
    assert Mark.parse('{"instance": "x", "run": "y", "oldest": 1, "running": [1]}') is None
    far = 10**15
    ranges = tuple((far + 2 * i, far + 2 * i + 1) for i in range(MARK_RANGES))
    many = tuple(
        Running(f"worker{n}@some-host-generator", f"run{n:08d}", f"worker{n}@some-host-generator-"
                "c6f2dd1a-6a1e-4a43-9d5a-2a2b3ac0f6e1", ranges, far)
        for n in range(9)
    )  # fmt: skip
    widest = Mark("talkstream-worker-generator", "0123abcd", far, ranges, many).fitting()
    assert len(widest.encode()) <= MARK_BYTES < 4096  # the broker's default limit
    assert widest.running and widest.running == many[-len(widest.running) :], "the newest kept"


class Group:
    """An executor's consumer as a look-up of its group's members uses it: the members, as the
    coordinator answers DescribeGroups (a static member's next run keeps its client id); and
    where it was told to read."""

    def __init__(self, *member_ids: str) -> None:
        self._coordinator = SimpleNamespace(coordinator_id=1)
        self._client = self
        self.member_ids = list(member_ids)
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def send(self, node: int, request: Any) -> Any:
        members = [(m, "aiokafka-0.14.0", "/127.0.0.1", b"", b"") for m in self.member_ids]
        return SimpleNamespace(groups=[(0, "g", "Stable", "consumer", "roundrobin", members)])

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_the_calls_a_hand_over_left_running_are_told_lost_once_their_run_left_the_group() -> None:
    """A worker that gave a partition up goes on with the calls of it it was running; its
    hand-over's mark lists them with its run, and the partition's owner carries them in its
    marks and tells the ledger they were lost once that run is no longer in the group (a
    crash: at its session's end; or its next run took its place), not at their deadline."""
    requests = Requests()
    executor = generator(requests)
    handed = Running(
        "worker-a-generator", "deadbeef0000", "worker-a-generator-1", ((3, 4), (5, 6)), 0
    )
    committed = {TP: (7, Mark("worker-a-generator", "deadbeef0000", 7, (), (handed,)))}
    executor.consumer = Marked(committed)  # type: ignore[assignment]
    asyncio.run(executor.handover.recover(executor.consumer, {TP}))
    assert executor.lost.reading == {} and executor.taken == {TP: 7}
    marks = executor.commits.marks({}, {})
    assert marks == {TP: (7, executor.commits.mark(7, (), (handed,)))}, "carried in its own marks"
    executor.commits.marked[TP] = marks[TP][1]

    alive = Group("worker-generator-7", "worker-a-generator-1")
    asyncio.run(executor.lost.check_elsewhere(alive, executor.taken))  # type: ignore[arg-type]
    assert executor.lost.reading == {} and alive.seeks == [], (
        "its run still calls them: no call twice"
    )

    executor.lost._checked_at = 0.0
    gone = Group("worker-generator-7", "worker-a-generator-2")  # its next run, or no member
    asyncio.run(executor.lost.check_elsewhere(gone, executor.taken))  # type: ignore[arg-type]
    assert gone.seeks == [(TP, 3)]
    assert executor.commits.marks({}, {}) == {}, "its last mark keeps them until they are told"
    batch = {TP: records(*((o, command(f"r{o}")) for o in range(3, 9)))}
    assert asyncio.run(executor.lost.past_lost(batch)) == {TP: 7}
    assert [(m.request_id, m.lost) for m in requests.sent] == [("r3", True), ("r5", True)]
    assert [r.offset for r in batch[TP]] == [7, 8]
    assert executor.commits.marks({}, {}) == {TP: (7, executor.commits.mark(7, ()))}, (
        "no longer listed"
    )


def test_a_hand_over_lists_the_calls_still_running_with_this_run() -> None:
    generate = Generate_(refused=set())
    queue = SimpleNamespace(take_back=lambda origins: [])
    executor = generator(Requests(), generate=generate, scheduler=queue)
    consumer = Committing()
    consumer._coordinator = SimpleNamespace(member_id="worker-generator-7")  # type: ignore[attr-defined]
    executor.consumer = consumer  # type: ignore[assignment]
    earlier = Running(
        "worker-c-generator", "0000aaaa", "c-1", ((1, 2),), 0
    )  # an earlier hand-over's
    executor.lost.elsewhere.carry(TP, (earlier,))
    executor.taken[TP] = 9
    for offset in (6, 7):
        executor._unreported.took(TP, offset, f"r{offset}", 1)  # running here
    asyncio.run(executor.handover.hand_back(executor.consumer, {TP}))
    [handed] = [Mark.parse(metadata) for _, metadata in consumer.commits[0].values()]
    assert handed is not None
    mine = Running(executor.config.instance, executor.run_id, "worker-generator-7", ((6, 8),),
                   handed.running[-1].at_ms)  # fmt: skip
    assert consumer.commits == [{TP: (9, executor.commits.mark(9, (), (earlier, mine)).encode())}]
    assert not executor.lost.elsewhere


def test_calls_of_this_run_listed_as_running_elsewhere_are_its_own_again_when_known() -> None:
    """A partition given back to the run calling for it: the calls it still knows are its
    own unreported ones again; listed by a mark after it forgot them (the partition went to
    another worker first), they stay listed as running in this run."""
    executor = generator(Requests())
    consumer = Committing()
    mine = Running(executor.config.instance, executor.run_id, "worker-generator-7", ((2, 3),), 0)
    committed = {TP: (5, Mark("worker-b-generator", "bbbb", 5, (), (mine,))),
                 OTHER: (8, Mark("worker-b-generator", "bbbb", 8, (), (mine,)))}  # fmt: skip
    marked = Marked(committed)
    marked.commit = consumer.commit  # type: ignore[attr-defined]
    executor.consumer = marked  # type: ignore[assignment]
    executor._unreported.took(TP, 2, "a", 1)  # still running here
    asyncio.run(executor.handover.recover(executor.consumer, {TP, OTHER}))
    assert executor.lost.elsewhere.of(TP) == () and executor.lost.elsewhere.of(OTHER) == (mine,)
    # nothing committed inside the rebalance listener (refused while the group's other members
    # sync, and aiokafka rejoins: a storm); the executor's next commit marks them its own
    assert consumer.commits == []
    marks = executor.commits.marks({}, {})
    assert marks[TP] == (5, executor.commits.mark(2, ((2, 3),)))


class Clock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def test_the_calls_a_hand_over_listed_are_watched_until_their_deadline_has_passed() -> None:
    """Past it the ledger re-issued those still unanswered: a run that lives on for days would
    otherwise have its calls read again from that far back when it leaves, to change nothing,
    while the partition's new commands wait."""
    executor = generator(Requests(), watch_ms=1000, clock=Clock(10_000))
    old = Running("worker-a-generator", "aaaa", "a-1", ((3, 4),), 8_999)
    recent = Running("worker-c-generator", "cccc", "c-1", ((5, 6),), 9_000)
    executor.lost.elsewhere.carry(TP, (old, recent))
    executor.lost.elsewhere.carry(OTHER, (old,))
    executor.taken.update({TP: 7, OTHER: 7})
    alive = Group("a-1", "c-1")
    asyncio.run(executor.lost.check_elsewhere(alive, executor.taken))  # type: ignore[arg-type]
    assert executor.lost.elsewhere.of(TP) == (recent,) and executor.lost.elsewhere.of(OTHER) == ()
    assert executor.commits.marks({}, {})[TP][1].running == (recent,)


class Queue:
    """An executor's scheduler as taking a batch and a hand-back use it: the jobs submitted,
    in order, and those a hand-back takes back (all of the partitions given up: none ran)."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def now(self) -> float:
        return 0.0

    def submit(self, target: str, job: Any, organization: str | None = None) -> None:
        self.jobs.append(job)

    def take_back(self, origins: set[TopicPartition]) -> list[Any]:
        return [job for job in self.jobs if job.origin in origins]

    def organization(self, family: str) -> str | None:
        return None  # no answer named one: every command is called here


class Decoding:
    """The dead letters as an executor's take uses them: every value here decodes."""

    async def decoded(self, decoder: Any, *, value: bytes | None, **_: Any) -> Any:
        return decoder(value)


def keyed(request_id: str, attempt: int = 1) -> bytes:
    """A GenerateText command of ``request_id`` as the ledger issues it (its key's fingerprint
    with it)."""
    [generate] = Ledger().send(received(request_id)).commands
    assert isinstance(generate, GenerateText)
    return encode(generate.model_copy(update={"attempt": attempt, "openai_key_id": "key-fp"}))


def taking(executor: Executor, *values: tuple[int, bytes]) -> None:
    """A batch of [generate] partition 0 taken by ``executor`` (committed, then queued)."""
    batch = {
        TP: [
            SimpleNamespace(topic=TP.topic, partition=TP.partition, offset=o, key=b"k", value=v)
            for o, v in values
        ]
    }
    asyncio.run(executor._take_batch(executor.consumer, batch))  # type: ignore[arg-type]


def test_a_command_kafka_holds_twice_is_called_once() -> None:
    """The ledger sends a command again when Kafka gave up on it, and Kafka may have written
    it all the same (a node that stopped leading the partition between writing it and
    acknowledging it answered NotLeaderForPartition, and the producer retried it until no
    leader was left for it): the topic holds it twice, the copy a little further on. The
    executor called both (Talkable got two calls for one attempt, OpenAI billed twice); now
    the copy is not called, nor left to tell lost. A later attempt of the same request is a
    command of its own, and a copy taken once its first was handed back (a rebalance gave the
    partition back to the same run) is the one to call."""
    queue = Queue()
    generate = Generate_(refused=set())
    executor = generator(Requests(), generate=generate, scheduler=queue, dead_letters=Decoding())
    executor.consumer = Committing()  # type: ignore[assignment]
    a, b = keyed("a"), keyed("b")
    taking(executor, (5, a), (6, b))
    taking(executor, (9, a))  # the ledger's copy of a, once the partition has a leader again
    assert [(job.key, job.attempt) for job in queue.jobs] == [("a", 1), ("b", 1)]
    assert executor._unreported.ranges(TP) == ((5, 7),), "the copy is nothing to tell lost"

    taking(executor, (10, keyed("a", attempt=2)))  # its re-issue
    assert [(job.key, job.attempt) for job in queue.jobs][-1] == ("a", 2)

    queue.jobs = [job for job in queue.jobs if job.key == "b"]  # b still queued when revoked
    for job in queue.jobs:
        job.record = (b"k", b)
    asyncio.run(executor.handover.hand_back(executor.consumer, {TP}))
    queue.jobs = []
    taking(executor, (11, b))  # the copy handed back, taken by the same run
    assert [(job.key, job.attempt) for job in queue.jobs] == [("b", 1)]


class Refusing:
    """An executor's consumer whose first ``refusals`` commits the coordinator refuses (an
    error of the commit alone, the group as it was: the consumer keeps its partitions and its
    position, past the batch): what it committed, where it was sought."""

    def __init__(self, refusals: int = 1) -> None:
        self.refusals = refusals
        self.error: Exception = KafkaError("the coordinator refused the commit")
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise self.error
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_a_batch_whose_commit_failed_is_read_again_from_its_first_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its consumer's position is past the batch: an executor that went on from there called
    none of its commands in that run (the ledger re-issued them at their deadline). It reads
    the batch again, each partition from its first offset not committed, and calls nothing of
    it before it is committed; a range another run lost, told to the ledger, is read again
    from its end, not told again."""
    monkeypatch.setattr(executors, "COMMIT_AGAIN_SECONDS", 0, raising=False)
    requests, queue = Requests(), Queue()
    executor = generator(requests, scheduler=queue, dead_letters=Decoding())
    consumer = executor.consumer = Refusing()  # type: ignore[assignment]
    executor.lost.reading[TP] = (2, Mark("i", "r", 0))  # its previous run took 0-1, reported none

    def batch(*values: tuple[TopicPartition, int, str]) -> dict[TopicPartition, list[Any]]:
        taken: dict[TopicPartition, list[Any]] = {}
        for tp, offset, key in values:
            taken.setdefault(tp, []).append(
                SimpleNamespace(
                    topic=tp.topic, partition=tp.partition, offset=offset, key=b"k",
                    value=keyed(key),
                )
            )  # fmt: skip
        return taken

    first = batch((TP, 0, "a"), (TP, 1, "b"), (TP, 2, "c"), (TP, 3, "d"), (OTHER, 7, "x"))
    asyncio.run(executor._take_batch(consumer, first))  # type: ignore[arg-type]
    assert consumer.commits == [] and queue.jobs == [], "nothing called before its commit"
    assert sorted(consumer.seeks) == [(TP, 2), (OTHER, 7)], "read again, not skipped"
    assert executor.taken == {}
    assert [m.request_id for m in requests.sent] == ["a", "b"]  # the lost range, told

    again = batch((TP, 2, "c"), (TP, 3, "d"), (OTHER, 7, "x"))
    asyncio.run(executor._take_batch(consumer, again))  # type: ignore[arg-type]
    assert [{tp: at for tp, (at, _) in c.items()} for c in consumer.commits] == [{TP: 4, OTHER: 8}]
    assert [job.key for job in queue.jobs] == ["c", "d", "x"]
    assert [m.request_id for m in requests.sent] == ["a", "b"], "not told lost again"
    assert executors.NOT_COMMITTED in REPEATED["streams.agents.executors"]  # one line every 10 s


def test_a_mark_too_long_leaves_out_what_the_deadlines_re_issue_and_names_nothing_more() -> None:
    """A broker may keep less commit metadata than a mark: a shorter mark leaves out first the
    oldest hand-overs' calls, then the newest ranges not reported, down to its least (the
    instance, the run and the oldest offset not reported, no offset named lost). What it
    leaves out the ledger re-issues at its deadline; it never names lost an offset the whole
    mark did not (a mark naming only the oldest would name every later one: a forwarded
    command, reported, re-issued while it is called elsewhere)."""
    old = Running("worker-a-generator", "run00000000a", "worker-a-generator-1", ((1, 2),), 1)
    new = Running("worker-b-generator", "run00000000b", "worker-b-generator-2", ((3, 5),), 2)
    whole = Mark("worker-generator", "0123456789ab", 10, ((10, 11), (14, 16), (20, 21)),
                 (old, new))  # fmt: skip
    assert whole.fitting() == whole, "it fits the most by default"
    sizes = sorted({len(whole.fitting(most).encode()) for most in range(0, 400)})
    steps = [whole.fitting(most) for most in sorted(sizes, reverse=True)]
    assert [(len(m.running), m.unreported) for m in steps] == [
        (2, ((10, 11), (14, 16), (20, 21))),
        (1, ((10, 11), (14, 16), (20, 21))),  # the oldest hand-over first
        (0, ((10, 11), (14, 16), (20, 21))),
        (0, ((10, 11), (14, 16))),  # then the newest range
        (0, ((10, 11),)),
        (0, ()),  # the least: the oldest offset, nothing named lost
    ]
    assert steps[1].running == (new,)
    for mark in steps:
        assert len(mark.encode()) <= len(whole.encode())
        assert Mark.parse(mark.encode()) == mark
        named = [o for o in range(0, 30) if mark.lost(o)]
        assert set(named) <= {o for o in range(0, 30) if whole.lost(o)}, "nothing more"
        assert mark.fitting(len(mark.encode())) == mark
    least = whole.fitting(0)
    assert least == Mark("worker-generator", "0123456789ab", 10, ())
    assert not any(least.lost(o) for o in range(0, 30))
    oldest_only = Mark("worker-generator", "0123456789ab", 10)  # an earlier version's: as it was
    assert oldest_only.fitting(0) == oldest_only


class Limited:
    """An executor's consumer on a broker keeping ``limit`` bytes of commit metadata: a commit
    with a longer mark is refused whole, as Kafka answers it (the group as it was); what it
    committed, and how many it refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []
        self.refused = 0
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        if any(len(metadata) > self.limit for _, metadata in offsets.values()):
            self.refused += 1
            raise OffsetMetadataTooLargeError()
        self.commits.append(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def test_a_commit_refused_for_its_marks_size_is_committed_with_shorter_marks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal halves the most a mark of this run may be (down to ``MARK_LEAST_BYTES``)
    and the batch is committed at once with its marks shortened (before, it was read again at
    each refusal, and a mark that never shrank stalled the partition for good). The most
    learned stays: the next batches are committed at the first try, and the mark committed
    is the one the executor compares with (not committed again when nothing changed)."""
    monkeypatch.setattr(executors, "COMMIT_AGAIN_SECONDS", 0, raising=False)
    queue = Queue()
    executor = generator(Requests(), scheduler=queue, dead_letters=Decoding())
    two_ranges = Mark("worker-generator", executor.run_id, 0, ((0, 1), (2, 3)))
    consumer = executor.consumer = Limited(len(two_ranges.encode()))  # type: ignore[assignment]
    taking(executor, (0, keyed("a")), (1, keyed("b")), (2, keyed("c")), (3, keyed("d")))
    for job in queue.jobs:
        if job.key in "bd":  # their calls end (how does not matter here)
            failed = UpstreamError("refused", reason="T")
            asyncio.run(job.report(Outcome(value=None, error=failed, waited_s=0, tries=1)))
    asyncio.run(executor._take_batch(consumer, {}))  # what is marked changed: committed
    assert executor.commits.marked[TP].unreported == ((0, 1), (2, 3))
    assert consumer.refused == 0

    with caplog.at_level(logging.WARNING, logger="streams.agents.executors"):
        taking(executor, (4, keyed("e")))  # (0,1), (2,3), (4,5): longer than the broker keeps
    assert [job.key for job in queue.jobs][-1] == "e", "taken, not read again"
    assert consumer.seeks == [] and consumer.refused >= 1
    committed = Mark.parse(consumer.commits[-1][TP][1])
    assert committed == executor.commits.marked[TP]
    # half the refused mark's length takes no range: the mark names the oldest offset only
    assert committed == Mark("worker-generator", executor.run_id, 0, ())
    assert len(committed.encode()) <= consumer.limit
    assert consumer.commits[-1][TP][0] == 5
    assert any("refused a commit for its mark's size" in m for m in caplog.messages)
    assert not any("could not commit" in m for m in caplog.messages)
    assert executor.refused is None
    assert MARK_BYTES > executor.commits.most >= marks.MARK_LEAST_BYTES

    refused, commits = consumer.refused, len(consumer.commits)
    taking(executor, (5, keyed("f")))
    assert consumer.refused == refused, "the most learned stays for the run"
    assert len(consumer.commits) == commits + 1
    asyncio.run(executor._take_batch(consumer, {}))
    assert len(consumer.commits) == commits + 1, "its mark is the one last committed"


def test_marks_grow_back_once_commits_pass_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The most a refusal taught stayed for the run: an operator who raised the broker's
    ``offset.metadata.max.bytes`` (as the stall's ERROR asks) left the run committing marks
    that name nothing lost (every range left to its deadline) until it restarted. Now
    ``RAISE_AFTER`` commits passed in a row double the most again, up to ``MARK_BYTES``; a
    broker that still keeps less refuses the next longer mark, which halves it again, said at
    INFO (nothing new: no WARNING each time), and the commit passes with a shorter mark."""
    monkeypatch.setattr(executors, "COMMIT_AGAIN_SECONDS", 0, raising=False)
    monkeypatch.setattr(commits_module, "RAISE_AFTER", 2)
    monkeypatch.setattr(logging.getLogger("streams.agents.executors"), "filters", [])
    queue = Queue()
    executor = generator(Requests(), scheduler=queue, dead_letters=Decoding())
    two_ranges = Mark("worker-generator", executor.run_id, 0, ((0, 1), (2, 3)))
    consumer = executor.consumer = Limited(len(two_ranges.encode()))  # type: ignore[assignment]
    taking(executor, (0, keyed("a")), (1, keyed("b")), (2, keyed("c")), (3, keyed("d")))
    for job in queue.jobs:
        if job.key in "bd":  # their calls end: (0, 1) and (2, 3) are not reported
            failed = UpstreamError("refused", reason="T")
            asyncio.run(job.report(Outcome(value=None, error=failed, waited_s=0, tries=1)))
    with caplog.at_level(logging.WARNING, logger="streams.agents.executors"):
        taking(executor, (4, keyed("e")))  # three ranges: refused, committed shorter
    learned = executor.commits.most
    assert learned < MARK_BYTES and consumer.refused == 1
    assert [r.levelno for r in caplog.records if "mark's size" in r.getMessage()] == [
        logging.WARNING
    ]

    caplog.clear()  # the broker still keeps less: a raised most is refused again, at INFO
    with caplog.at_level(logging.INFO, logger="streams.agents.executors"):
        taking(executor, (5, keyed("f")))  # two passed (the shorter commit of e's batch too)
        assert executor.commits.most == min(learned * 2, MARK_BYTES)
        assert consumer.refused == 1
        taking(executor, (6, keyed("g")))  # a mark as long as the raised most: refused again
    assert consumer.refused == 2 and executor.commits.most <= learned
    assert len(Mark.parse(consumer.commits[-1][TP][1]).encode()) <= consumer.limit
    assert consumer.commits[-1][TP][0] == 7 and executor.refused is None
    said = [r.levelno for r in caplog.records if "mark's size" in r.getMessage()]
    assert said == [logging.INFO]

    consumer.limit = 4096  # the operator raised offset.metadata.max.bytes
    for offset in range(7, 7 + 2 * 8):  # enough passes for every doubling back
        taking(executor, (offset, keyed(f"x{offset}")))
    assert executor.commits.most == MARK_BYTES
    whole = Mark("worker-generator", executor.run_id, 0, ((0, 1), (2, 3), (4, 23)))
    assert Mark.parse(consumer.commits[-1][TP][1]) == whole  # every range named again
    assert consumer.refused == 2


def test_a_commit_kafka_refuses_until_an_operator_acts_is_an_error_and_readyz_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal no shorter mark fixes (the group's authorization, a broker keeping less
    than a mark at its least) stalls the partitions: the batch is read again a second apart
    for as long as it lasts. That was one WARNING every 10 s among those a rebalance says;
    now it is an ERROR (as often) and ``/readyz`` answers 503 with it, until a commit
    passes."""
    monkeypatch.setattr(executors, "COMMIT_AGAIN_SECONDS", 0, raising=False)
    # each line as it is logged: a test before this one in the process may have installed the
    # logs' filters (``streams.logs.configure``), whose one line every 10 s would keep these
    monkeypatch.setattr(logging.getLogger("streams.agents.executors"), "filters", [])
    queue = Queue()
    executor = generator(Requests(), scheduler=queue, dead_letters=Decoding())
    executor.consumer = Refusing(refusals=1)  # type: ignore[assignment]
    executor.consumer.error = GroupAuthorizationFailedError("g")
    with caplog.at_level(logging.WARNING, logger="streams.agents.executors"):
        taking(executor, (0, keyed("a")))
    assert queue.jobs == [] and executor.consumer.seeks == [(TP, 0)], "read again"
    [record] = [r for r in caplog.records if "could not commit" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "GroupAuthorizationFailedError" in record.getMessage()
    assert executors.REFUSED in REPEATED["streams.agents.executors"]  # one line every 10 s
    assert ready(None, [executor]) == (False, executor.refused)
    assert executor.refused is not None and "GroupAuthorizationFailedError" in executor.refused
    taking(executor, (0, keyed("a")))  # granted: committed
    assert executor.refused is None and [job.key for job in queue.jobs] == ["a"]

    least = Mark("worker-generator", executor.run_id, 1, ())  # longer than the broker keeps
    at_least = generator(Requests(), scheduler=Queue(), dead_letters=Decoding())
    at_least.consumer = Limited(len(least.encode()) - 1)  # type: ignore[assignment]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.agents.executors"):
        taking(at_least, (1, keyed("b")))
    assert at_least.commits.most == marks.MARK_LEAST_BYTES
    assert at_least.refused is not None and "offset.metadata.max.bytes" in at_least.refused
    assert [r.levelno for r in caplog.records if "could not commit" in r.getMessage()] == [
        logging.ERROR
    ]

    rebalanced = generator(Requests(), scheduler=Queue(), dead_letters=Decoding())
    rebalanced.consumer = Refusing(refusals=1)  # type: ignore[assignment]
    rebalanced.consumer.error = CommitFailedError("rebalanced")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.agents.executors"):
        taking(rebalanced, (0, keyed("a")))
    assert rebalanced.refused is None, "a rebalance passes: no operator to call"
    assert [r.levelno for r in caplog.records if "could not commit" in r.getMessage()] == [
        logging.WARNING
    ]


def test_a_forwarded_command_is_never_told_lost_even_among_too_many_to_list() -> None:
    """More offsets not reported than a mark lists (a slow upstream, a campaign's blast): a
    mark named only the oldest, and the partition's next owner told the ledger every attempt
    from there was lost, among them a command forwarded to its organisation's executor and
    acknowledged (``Forwarding.send`` marks it reported: called there). Its attempt is still
    the ledger's current one (its result comes from there), so the ledger re-issued it: the
    same OpenAI call made twice for one attempt, billed twice. A mark now lists the oldest
    offsets it can, and names nothing lost beyond them; the rest are re-issued at their
    deadline."""
    queue = Queue()
    executor = generator(Requests(), generate=Generate_(refused=set()), scheduler=queue,
                         dead_letters=Decoding())  # fmt: skip
    executor.consumer = Committing()  # type: ignore[assignment]
    person = Ledger()
    [issued] = person.send(received("forwarded")).commands  # its ledger: generating, attempt 1
    assert isinstance(issued, GenerateText)
    values = [(o, keyed(f"r{o}")) for o in range(MANY + 10)]
    values[5] = (5, encode(issued.model_copy(update={"openai_key_id": "key-fp"})))
    taking(executor, *values)
    executor._unreported.reported("forwarded", 1)  # forwarded, acknowledged: called elsewhere
    asyncio.run(executor.commits.commit(executor.consumer, executor.commits.marks({}, {})))
    [(at, metadata)] = executor.consumer.commits[-1].values()  # its last commit: it dies
    mark = Mark.parse(metadata)  # type: ignore[arg-type]
    assert mark is not None

    requests = Requests()
    owner = generator(requests)  # the partition's next owner
    owner.consumer = Marked({TP: (at, mark)})  # type: ignore[assignment]
    asyncio.run(owner.handover.recover(owner.consumer, {TP}))
    batch = {TP: records(*values)}
    assert asyncio.run(owner.lost.past_lost(batch)) == {TP: at}
    for lost in requests.sent:  # its ledger, its attempt 1 called at the organisation's
        if lost.request_id == "forwarded":
            assert person.send(lost).commands == [], "re-issued while called elsewhere"
    told = [m.request_id for m in requests.sent]
    assert told == [f"r{o}" for o in range(MANY + 10) if o != 5], "every one not reported"


def test_a_next_owner_tells_lost_every_command_queued_among_others_ended_not_a_forward() -> None:
    """A paced key's commands queued between a quick key's in one partition, more ranges than
    a mark lists: its ranges named the oldest 32, and the rest waited for their deadline. The
    mark now joins the gaps whose commands were reported by their result (the ledger reads
    that result before the news of its loss, and ignores the news), never one holding a
    command forwarded: the partition's next owner tells the ledger every queued command was
    lost, and not the forward."""
    queue = Queue()
    results = Requests()
    executor = generator(results, scheduler=queue, dead_letters=Decoding())
    executor.consumer = Committing()  # type: ignore[assignment]
    values = [(o, keyed(f"r{o}")) for o in range(4 * MARK_RANGES)]
    taking(executor, *values)
    forwarded = "r65"
    for job in queue.jobs:
        if int(job.key[1:]) % 2 and job.key != forwarded:  # the quick key's calls end
            failed = UpstreamError("refused", reason="T")
            asyncio.run(job.report(Outcome(value=None, error=failed, waited_s=0, tries=1)))
    executor._unreported.reported(forwarded, 1)  # forwarded, acknowledged: called elsewhere
    asyncio.run(executor.commits.commit(executor.consumer, executor.commits.marks({}, {})))
    [(at, metadata)] = executor.consumer.commits[-1].values()  # its last commit: it dies
    mark = Mark.parse(metadata)  # type: ignore[arg-type]
    assert mark is not None and len(mark.unreported or ()) <= MARK_RANGES

    requests = Requests()
    owner = generator(requests)  # the partition's next owner
    owner.consumer = Marked({TP: (at, mark)})  # type: ignore[assignment]
    asyncio.run(owner.handover.recover(owner.consumer, {TP}))
    assert asyncio.run(owner.lost.past_lost({TP: records(*values)})) == {TP: at}
    told = {m.request_id for m in requests.sent}
    queued = {f"r{o}" for o in range(0, 4 * MARK_RANGES, 2)}
    assert queued <= told, f"left to their deadline: {sorted(queued - told)}"
    assert forwarded not in told, "told lost while called elsewhere: called twice"
    reported = {m.request_id for m in results.sent}  # in [requests] before the news
    assert told - queued and told - queued <= reported
    for request_id in told - queued:  # their ledger: the result, then the news: ignored
        person = Ledger()
        person.send(received(request_id))
        [result] = [m for m in results.sent if m.request_id == request_id]
        person.send(result)
        [lost] = [m for m in requests.sent if m.request_id == request_id]
        assert person.send(lost).commands == [], "a call reported re-issued"
