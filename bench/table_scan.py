"""What one read of the whole ledger table costs the worker's loop, side by side.

    python -m bench.table_scan --people 1000000

The deadline timer's index is rebuilt from the ledger table. Until the seventh round of
``bench/PROFILE.md`` the timer did it every 30 s and decoded every person's state (the
baseline here); now it does it once per recovery and decodes only the states with something
in flight (``streams.agents.ledger.TableScan``). Both read the same in-memory table of
``--people`` states, ``--in-flight`` of them with a generation under way, the rest ended.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench.replay import webhook
from models.ledger import PersonState, Policy, handle
from streams.agents.deadlines import DeadlineIndex
from streams.agents.ledger import TableScan
from streams.codecs import decode, encode

STAGES = {"generating": 120_000, "publishing": 60_000}


def table_of(people: int, in_flight: float, now_s: int) -> dict[bytes, bytes]:
    """``people`` stored states; every ``1 / in_flight``-th with its generation under way."""
    policy, table, every = Policy(), {}, max(round(1 / in_flight), 1) if in_flight else 0
    for i in range(people):
        person, messages = webhook(i, now_s)
        state: PersonState | None = None
        for message in messages[:1] if every and i % every == 0 else messages:
            state = handle(state, message, policy, now_s * 1000).state
        assert state is not None
        table[person.encode()] = encode(state)
    return table


def every_state_decoded(table: dict[bytes, bytes]) -> int:
    due = DeadlineIndex(STAGES)
    for person, raw in list(table.items()):
        due.track(person.decode(), decode(PersonState, raw))
    return len(due.overdue(2**62))


def in_flight_decoded(table: dict[bytes, bytes]) -> int:
    due = DeadlineIndex(STAGES)
    TableScan(table, due).run()
    return len(due.overdue(2**62))


def timed(scan: Callable[[dict[bytes, bytes]], int], table: dict[bytes, bytes]) -> str:
    started = time.perf_counter()
    found = scan(table)
    return f"{(time.perf_counter() - started) * 1000:,.0f} ms ({found:,} in flight)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=float, default=0.01, help="fraction, 0 to 1")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.people < 1 or not 0 <= args.in_flight <= 1:
        parser.error("--people must be at least 1 and --in-flight between 0 and 1")
    table = table_of(args.people, args.in_flight, int(time.time()))
    print(f"a table of {args.people:,} people, {args.in_flight:.0%} with work in flight")
    for run in range(1, args.runs + 1):
        print(
            f"run {run}: every state decoded {timed(every_state_decoded, table)}; "
            f"in-flight states only {timed(in_flight_decoded, table)}"
        )


if __name__ == "__main__":
    main()
