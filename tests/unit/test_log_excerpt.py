"""What a failed integration test prints of a process's log (``tests.support.log_excerpt``)."""

from __future__ import annotations

from tests.support import log_excerpt

CRASH = (
    "INFO started\n"
    "<ConsumerThread: running> crashed: CommitFailedError('...')\n"
    "Traceback (most recent call last):\n"
    '  File "x.py", line 1, in f\n'
    "CommitFailedError: ...\n"
)


def test_a_crashed_process_s_first_error_is_printed_before_its_end() -> None:
    stop = "".join(f"INFO stopping child {n}\n" for n in range(400))
    text = CRASH + stop + "ERROR Traceback (most recent call last):\nRuntimeError: closed\n"
    excerpt = log_excerpt(text, end=1000)
    assert excerpt.startswith("<ConsumerThread: running> crashed: CommitFailedError")
    assert "CommitFailedError: ...\n" in excerpt
    assert excerpt.endswith(text[-1000:])


def test_a_log_whose_end_holds_its_first_error_is_printed_as_its_end() -> None:
    assert log_excerpt("INFO a\n" * 10 + CRASH, end=1000) == ("INFO a\n" * 10 + CRASH)[-1000:]
    quiet = "INFO a\n" * 1000
    assert log_excerpt(quiet, end=1000) == quiet[-1000:]
