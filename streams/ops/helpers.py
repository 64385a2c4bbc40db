"""Replay's work beside the reading: a forked helper process and the pipe to it.

``talkstream replay`` is CPU-bound Python (decoding, the rules, binding rows), so on a machine
with more than one core ``--verify`` re-derives each share of the [requests] partitions in a
helper of its own (a person's decisions never leave its partition) while this process reads
the recorded [lifecycle], and a rebuild into an empty projection rebuilds each share of the
[lifecycle] partitions but one in a helper, into the same database (a request's events never
leave its partition).

A helper is forked (it starts at once, with everything already imported, and shares nothing
but the pipe afterwards). It reports ``("progress", n)``, then ``("done", value)`` or
``("error", message)``; a helper that talks with its caller on the way also reports
``("answer", value)`` and waits for the caller's word (:meth:`Channel.receive`). Where fork is
not available the work stays in the calling process.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from streams.errors import TalkstreamError

FORK = "fork" in multiprocessing.get_all_start_methods()
STALL_SECONDS = 120.0  # a helper that says nothing for this long is taken for hung


class HelperError(TalkstreamError):
    pass


def default_processes() -> int:
    """Processes a replay uses by default: one per core (1: all the work in this one)."""
    return (os.cpu_count() or 1) if FORK else 1


def shares(bounds: dict[int, tuple[int, int]], count: int) -> list[dict[int, tuple[int, int]]]:
    """The partitions that have records, split into at most ``count`` shares of about equal
    size (largest first, each to the lightest share)."""
    loaded = sorted(
        ((end - first, p) for p, (first, end) in bounds.items() if end > first), reverse=True
    )
    split: list[dict[int, tuple[int, int]]] = [{} for _ in range(min(count, len(loaded)))]
    sizes = [0] * len(split)
    for size, partition in loaded:
        lightest = sizes.index(min(sizes))
        split[lightest][partition] = bounds[partition]
        sizes[lightest] += size
    return split


class Channel:
    """The helper's end of the pipe."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def progress(self, count: int) -> None:
        self._conn.send(("progress", count))

    def answer(self, value: Any) -> None:
        """Hand the caller a value on the way (it takes it with :meth:`Helper.answer`)."""
        self._conn.send(("answer", value))

    def receive(self) -> Any:
        """Wait for the caller's word (:meth:`Helper.send`)."""
        return self._conn.recv()


class Helper:
    """One forked process running ``work(channel, *args)``; its return value is the result."""

    def __init__(self, name: str, work: Callable[..., Any], *args: Any) -> None:
        context = multiprocessing.get_context("fork")
        self.name = name
        self._conn, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(theirs, work, args), name=name, daemon=True
        )
        self._process.start()
        theirs.close()
        self._held: tuple[str, Any] | None = None  # an answer or result not yet asked for

    @property
    def answered(self) -> bool:
        """Whether a report other than progress (an answer, the result) waits to be taken."""
        return self._held is not None

    @property
    def connection(self) -> Any:
        return self._conn

    def drain(self, progress: Callable[[int], None] | None) -> None:
        """Take the progress reports already waiting, without waiting for more."""
        while self._held is None and self._conn.poll():
            self._take(progress)

    def answer(self, progress: Callable[[int], None] | None) -> Any:
        """Wait for the helper's next answer (its progress reported meanwhile)."""
        return self._wait("answer", progress)

    def send(self, value: Any) -> None:
        """Give the helper the word it waits for (only when it waits: after an answer)."""
        self._conn.send(value)

    def result(self, progress: Callable[[int], None] | None) -> Any:
        """Wait for the helper's result (its progress reported meanwhile)."""
        value = self._wait("done", progress)
        self._process.join()
        return value

    def _wait(self, kind: str, progress: Callable[[int], None] | None) -> Any:
        while self._held is None:
            if not self._conn.poll(STALL_SECONDS):
                raise HelperError(f"{self.name}: no word for {STALL_SECONDS:.0f}s")
            self._take(progress)
        held, value = self._held
        if held != kind:
            raise HelperError(f"{self.name}: {held} where {kind} was expected")
        self._held = None
        return value

    def stop(self) -> None:
        """End the process if it still runs (after an error elsewhere)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._conn.close()

    def _take(self, progress: Callable[[int], None] | None) -> None:
        try:
            kind, value = self._conn.recv()
        except (EOFError, ConnectionResetError):
            self._process.join()
            raise HelperError(
                f"{self.name} stopped without a result (exit code {self._process.exitcode})"
            ) from None
        if kind == "progress":
            if progress is not None:
                progress(value)
        elif kind in ("answer", "done"):
            self._held = (kind, value)
        else:
            raise HelperError(f"{self.name}: {value}")


def answers(
    helpers: Sequence[Helper], progress: Callable[[int], None] | None
) -> Iterator[tuple[Helper, Any]]:
    """Each helper's next answer, in the order they come (the first to answer need not wait
    for the others to be given its word)."""
    waiting = list(helpers)
    while waiting:
        for helper in list(waiting):
            helper.drain(progress)
            if helper.answered:
                waiting.remove(helper)
                yield helper, helper.answer(progress)
        # those left were drained and had not answered: wait for any to say more
        if waiting and not multiprocessing.connection.wait(
            [helper.connection for helper in waiting], STALL_SECONDS
        ):
            names = ", ".join(helper.name for helper in waiting)
            raise HelperError(f"{names}: no word for {STALL_SECONDS:.0f}s")


def run_all(helpers: Sequence[Helper], progress: Callable[[int], None] | None) -> list[Any]:
    """Every helper's result, in order; all of them stopped if one fails."""
    try:
        return [helper.result(progress) for helper in helpers]
    finally:
        for helper in helpers:
            helper.stop()


def _serve(conn: Any, work: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        value = work(Channel(conn), *args)
        conn.send(("done", value))
    except TalkstreamError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # reported to the caller, who raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:1000]))
    finally:
        conn.close()
