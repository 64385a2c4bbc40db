"""What an executor's commits say besides the offset (its mark), and how it keeps the oldest
offset it took and has not reported: what its next run tells the ledger was lost."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.agents.executors import Mark, Unreported

TP = TopicPartition("generate", 0)
OTHER = TopicPartition("generate", 1)


def test_a_mark_reads_back_as_written_and_anything_else_is_no_mark() -> None:
    mark = Mark("talkstream-worker-generator", "0123abcd", 41)
    assert Mark.parse(mark.encode()) == mark
    for metadata in ("", "{}", "not json", '{"instance": "x", "run": "y"}', "[1, 2]", "null"):
        assert Mark.parse(metadata) is None, metadata
    assert len(mark.encode()) < 200  # far below the broker's offset.metadata.max.bytes


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
