"""The pause before a client connects again to a broker it could not reach
(``streams.kafka_reconnect``; on a real broker: ``tests/integration/test_broker_down.py``)."""

from __future__ import annotations

from streams.kafka_reconnect import BASE_SECONDS, MAX_SECONDS, delay


def test_the_pause_doubles_from_the_first_to_the_cap() -> None:
    assert [delay(n) for n in range(1, 7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert (delay(1), delay(6)) == (BASE_SECONDS, MAX_SECONDS)


def test_a_broker_down_for_hours_is_still_tried_every_second() -> None:
    # a thousand failures in a row is a quarter of an hour: 2.0 ** 1024 overflowed, and the
    # OverflowError crashed the worker's consumer
    assert delay(1_100) == MAX_SECONDS
    assert delay(10**9) == MAX_SECONDS
