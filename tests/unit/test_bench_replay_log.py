"""The replay benchmark's synthetic log has the shapes the live system writes: a replay or a
verify measured on it does the work it does on a real log."""

from __future__ import annotations

from bench.replay import synthetic_log
from models.events import LifecycleEvent
from models.ledger import Policy
from streams.codecs import decode
from streams.ops.replay import Record
from streams.ops.verify import Rederivation, VerifySummary
from streams.projection.rows import fold

NOW_S = 1_767_225_600


def test_the_synthetic_log_names_the_talkable_event_of_every_publication() -> None:
    """The live publisher reports the number a text landed under (schema 8), and the ledger
    names the one each attempt writes under (schema 9): the synthetic results said neither, so
    a replay measured on them wrote no ``event_number`` and a verify compared none."""
    requests_log, lifecycle = synthetic_log(3, NOW_S)
    events = [decode(LifecycleEvent, value) for value in lifecycle]
    numbers = {
        (e.request_id, e.type): (e.attempted_event_number, e.event_number)
        for e in events
        if e.attempted_event_number or e.event_number
    }
    assert numbers == {
        (rid, type_): said
        for rid in ("r00000000", "r00000001", "r00000002")
        for type_, said in (
            ("PublicationStarted", (f"generate_text_complete-{rid}", None)),
            ("CompletionPublished", (None, f"generate_text_complete-{rid}")),
        )
    }
    rows: dict[str, dict[str, object]] = {}
    for e in events:
        fold(rows, e)
    assert {rid: row["event_number"] for rid, row in rows.items()} == {
        rid: f"generate_text_complete-{rid}" for rid in ("r00000000", "r00000001", "r00000002")
    }

    # and it is a log the rules derive again, every field of it
    check = Rederivation(Policy(), VerifySummary("requests", "lifecycle"))
    for offset, (_, value) in enumerate(requests_log):
        check.request(Record("requests", 0, offset, NOW_S * 1000, value))
    for offset, value in enumerate(lifecycle):
        check.recorded(Record("lifecycle", 0, offset, 0, value))
    summary = check.compare()
    assert (summary.differences, summary.matched) == ([], len(lifecycle))
