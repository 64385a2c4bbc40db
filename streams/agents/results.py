"""What an executor tells the ledger of a call: its result, sent to [requests] and acknowledged.

A result Kafka will never take (a generated text of megabytes, over [requests]'
``max.message.bytes``) would be lost at every re-issue, each call billed, until the attempts
ran out: its attempt is reported failed instead (``RecordTooLarge``, with the reason), and the
ledger ends it. A result Kafka does not take otherwise is logged and left unreported: the
executor's next run, or the partition's next owner, tells the ledger it was lost
(``streams.agents.lost``), or its deadline re-issues it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError

from streams.agents.outputs import RECORD_TOO_LARGE
from streams.agents.work import Work
from streams.codecs import encode
from streams.errors import UpstreamError
from streams.kafka_options import GivenUp
from streams.runtime import REFUSED, Clock, Topics, refusal
from streams.upstream.scheduler import Outcome

log = logging.getLogger("streams.agents.executors")  # the executors' lines, as before the split

# what an executor could not send, and why (in an outage, one per call: ``streams.logs.REPEATED``)
NOT_REPORTED = "%s could not report request_id=%s"
NOT_HANDED_BACK = "%s could not hand back request_id=%s"
NOT_TAKEN = (
    " (%s: %s): Kafka did not take it; told lost by the partition's next reader, or re-issued "
    "at its deadline"
)


class Results:
    """One executor's results to [requests]: each call's, as its :class:`Work` says."""

    def __init__(self, *, name: str, work: Work[Any], topics: Topics, clock: Clock) -> None:
        self._name = name  # the executor's, in its log lines
        self._work = work
        self._topics = topics
        self._clock = clock

    async def send(self, command: Any, outcome: Outcome[Any]) -> bool:
        """The result of ``command``'s call (``outcome``) sent and acknowledged: whether Kafka
        took it (if not, it is logged, and the attempt is still the executor's to report)."""
        result = self._work.result(command, outcome, self._clock.now_ms())
        value = encode(result)
        try:
            try:
                await (await self._topics.requests.send(key=command.person.encode(), value=value))
            except REFUSED as exc:
                if outcome.error is not None:
                    raise  # (a failure's message is cut short: it cannot be what is too large)
                # a result Kafka will never take (a text of megabytes): sent again at every
                # re-issue, each call billed, until the attempts ran out ("DeadlineExpired").
                # The attempt fails instead, with the reason, and is not called again.
                why = refusal("the result", len(value), self._topics.requests.get_topic_name(), exc)
                log.warning(
                    "%s: request_id=%s attempt=%s: %s",
                    self._name, command.request_id, command.attempt, why,
                )  # fmt: skip
                error = UpstreamError(why, reason=RECORD_TOO_LARGE)
                failed: Outcome[Any] = Outcome(
                    None, error, outcome.waited_s, outcome.tries, outcome.call_s
                )
                result = self._work.result(command, failed, self._clock.now_ms())
                await (
                    await self._topics.requests.send(
                        key=command.person.encode(), value=encode(result)
                    )
                )
        except Exception as exc:  # the ledger's deadline re-issues what is lost here
            log_unsent(exc, NOT_REPORTED, self._name, command.request_id)
            return False  # still unreported: a restart tells the ledger it was lost
        return True


def log_unsent(exc: BaseException, message: str, *args: Any) -> None:
    """A record Kafka did not take (its partition without a leader for the producer's request
    timeout): a WARNING naming the error and what becomes of the call (an outage the worker
    rides out is no bug; its traceback, an ERROR at every call, said nothing more); one a
    stopping worker gave up on (``GivenUp``), which the stop's WARNING counted: a DEBUG line.
    Anything else is no refusal of Kafka's: an ERROR with its traceback."""
    if isinstance(exc, GivenUp):
        log.debug(message + " (the stop gave up on Kafka)", *args)
    elif isinstance(exc, KafkaError):
        log.warning(message + NOT_TAKEN, *args, type(exc).__name__, exc)
    else:
        log.error(message, *args, exc_info=exc)
