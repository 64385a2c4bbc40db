"""Logging for every talkstream process: plain text, or one JSON object per line
(``--log-format json`` / ``TALKSTREAM_LOG_FORMAT=json``, python-json-logger). Context travels
as ``extra={...}`` (request_id, site, state, …) and becomes JSON keys. Never a secret."""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REBALANCING = "Heartbeat failed for group %s because it is rebalancing"
COMMIT_REJOIN = "OffsetCommit failed for group %s due to group error (%s), will rejoin"
BUFFER_FULL = "producer buffer full size "

#: WARNINGs (and one ERROR) of the libraries underneath that report normal operation, by
#: logger: each is logged as INFO (and not at all where INFO is not).
#: - aiokafka logs a heartbeat answered "rebalancing": each member of a group says it once
#:   whenever a worker joins or leaves. It is how a member learns of the rebalance.
#: - aiokafka logs, as an ERROR, a commit the group coordinator refused because the group
#:   has moved on (``IllegalGeneration``, ``UnknownMemberId``, ``RebalanceInProgress``): a
#:   member that commits between a rebalance starting and it rejoining (a worker joining, or
#:   leaving, killed, after the session timeout) is told so. aiokafka rejoins, and whoever
#:   commits raises ``CommitFailedError``, which the projector (INFO) and the executors
#:   (WARNING, with what becomes of the batch) say themselves; the partition's next owner
#:   reads on from the last commit, or from where the projection has read to.
#: - faust logs "producer buffer full size N" when more than 100 table writes wait to go to
#:   the changelog, and then sends them before the next message is taken: the ledger stores a
#:   batch's states together (up to 500 people), so a campaign blast says it at every batch.
#:   It is faust's flow control doing its work, not a fault.
NOTICES: dict[str, Callable[[str], bool]] = {
    "aiokafka.consumer.group_coordinator": {REBALANCING, COMMIT_REJOIN}.__contains__,
    "faust.transport.producer": lambda msg: msg.startswith(BUFFER_FULL),
}


#: What aiokafka logs at each try to reach a broker it cannot reach, by logger. It tries again
#: at once (each failed connection forces a metadata update, which tries again): while a broker
#: is down, hundreds of these lines a second per client (an ingress under traffic wrote 17 MB
#: in a 40 s outage). Each still says the broker is down, but once every ``REPEAT_EVERY_S``.
REPEATED: dict[str, frozenset[str]] = {
    "aiokafka": frozenset(
        {
            "Unable connect to node with id %s: %s",
            'Unable connect to "%s:%s": %s',
            "Unable to update metadata from %s",
            'Unable to request metadata from "%s:%s": %s',
            "Unable to request metadata from node with id %s: %r",
        }
    ),
    "aiokafka.consumer.fetcher": frozenset({"Failed fetch messages from %s: %s"}),
    # a producer asking for a new producer id (``IdempotentProducer``) while no broker answers
    "aiokafka.producer.sender": frozenset(
        {"Cannot send %r to %s: %r", "Could not send %r: %r", "Got error produce response: %s"}
    ),
    "aiokafka.consumer.group_coordinator": frozenset({"Group Coordinator Request failed: %s"}),
    # a record faust sent its own way (a changelog's) that Kafka did not take: in an outage,
    # one per record (``streams.faust_transport.NOT_TAKEN``)
    "streams.faust_transport": frozenset(
        {"Kafka did not take a record of %s partition=%s (%s: %s)%s"}
    ),
    # a webhook the ingress answered 503 (Kafka out of reach or not acknowledging, partitions
    # added to [requests]): one per webhook, and Talkable retries each, so a blast of them a
    # second for as long as it lasts (the 503s are counted: talkstream_ingress_requests_total)
    "streams.ingress": frozenset({"ingress could not produce request_id=%s: %s"}),
    # an executor's result or hand-back that Kafka did not take: in an outage, one per call
    # (``streams.agents.results.NOT_TAKEN``)
    "streams.agents.executors": frozenset(
        {
            "%s could not report request_id=%s (%s: %s): Kafka did not take it; told lost by "
            "the partition's next reader, or re-issued at its deadline",
            "%s could not hand back request_id=%s (%s: %s): Kafka did not take it; told lost "
            "by the partition's next reader, or re-issued at its deadline",
            # a hand-back Kafka may hold, sent again at each turn (``handover.SENT_AGAIN``)
            "%s could not %s request_id=%s (%s: %s): Kafka may hold it: sent again until it "
            "takes it, not told lost",
            # a commit that fails for as long as it lasts (``executors.NOT_COMMITTED``)
            "%s could not commit (%s): what it took since its last commit is read again, none "
            "of it called",
            # the commit before a forward, for as long as it fails (``forwarding.NOT_UNMARKED``)
            "%s could not commit its marks before forwarding (%s): the forwards are held, sent "
            "once a commit no longer names them",
            # one Kafka refuses until an operator acts (``executors.REFUSED``)
            "%s could not commit (%s: %s): what it took since its last commit is read again, "
            "none of it called, until an operator acts; /readyz answers 503 meanwhile",
        }
    ),
}
REPEAT_EVERY_S = 10.0


class Repeats(logging.Filter):
    """Logs one of ``REPEATED`` once every ``every_s`` (by logger and message, whatever its
    arguments), saying how many were left out since the last one logged."""

    def __init__(
        self, every_s: float = REPEAT_EVERY_S, clock: Callable[[], float] = time.monotonic
    ):
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # when logged, left out since

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in REPEATED.get(record.name, ()):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        logged = self._last.get(key)
        if logged is not None and now - logged[0] < self._every_s:
            self._last[key] = (logged[0], logged[1] + 1)
            return False
        self._last[key] = (now, 0)
        if logged is not None and logged[1]:
            left_out = f" ({logged[1]} more like it in the last {now - logged[0]:.0f} s)"
            record.msg = f"{record.msg}{left_out}"
        return True


class Notice(logging.Filter):
    """Logs one of ``NOTICES`` as INFO, not WARNING (or ERROR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        says = NOTICES.get(record.name)
        if record.levelno in (logging.WARNING, logging.ERROR) and says and says(str(record.msg)):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class RedactBadRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a line too long, a body past a short
    Content-Length) as an ERROR with the raw bytes it choked on, which may hold keys or a
    token, and a traceback: kept as the fact alone, a WARNING (the client's fault, not ours).
    So is a body whose chunks or compression break after its headers were taken: aiohttp
    logs the ``RequestPayloadError`` it gets reading what a handler left of it, with the
    parser's error, and its bytes, as the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        from streams.refusals import refusal

        exc = record.exc_info[1]
        while exc is not None and not isinstance(exc, HttpProcessingError):
            exc = exc.__cause__
        if isinstance(exc, HttpProcessingError):
            # the status answered, which is not always aiohttp's (a 414, a 431)
            record.msg, record.args = (
                "refused a malformed HTTP request: %s (%s)",
                (type(exc).__name__, refusal(exc, 0)[0]),
            )
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_aiohttp_server_log() -> None:
    """For every aiohttp server of the process (the ingress, the console)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactBadRequests) for f in server.filters):
        server.addFilter(RedactBadRequests())


#: Loggers of the libraries underneath that, at DEBUG, log whole records or requests: held at
#: INFO whatever the level (their INFO and above as ever), as ``httpx`` is at WARNING. Records
#: carry sealed keys, prompts, emails and texts: never a whole payload in a log.
#: - ``aiokafka.conn``: every request and response to a broker, as a struct: a produce
#:   request's record batches and a fetch response's records (keys and values in bytes), and
#:   a SASL authenticate request's credentials.
#: - ``aiokafka.producer.producer``: "Sending (key=%s value=%s) to %s", at each send.
#: - ``faust.topics`` and ``faust.transport.drivers.aiokafka``: "send: topic=%r k=%r v=%r ...",
#:   at each record faust sends (a table's changelog writes included).
#: - ``faust.agents.agent``: "%r yielded: %r", each value an agent yields.
#: The others' DEBUG lines say what happens (metadata, offsets, commits, group joins, seeks).
PAYLOADS = (
    "aiokafka.conn",
    "aiokafka.producer.producer",
    "faust.topics",
    "faust.transport.drivers.aiokafka",
    "faust.agents.agent",
)

FILTERS: dict[str, Any] = {"notice": NOTICES, "repeats": REPEATED}  # each, by logger


def _at_least(floor: int, level: str) -> str:
    """The level of a logger held at ``floor``: never lower than the process's (a logger's
    own level lets its records through to the root's handler at any root level)."""
    return logging.getLevelName(max(floor, logging.getLevelNamesMapping()[level.upper()]))


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    formatter: dict[str, Any] = (
        {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
        if fmt == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"notice": {"()": Notice}, "repeats": {"()": Repeats}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # the OpenAI SDK's HTTP client logs every request at INFO: noise, and a measurable
        # share of the worker's time under load (our own lines say what happened)
        "loggers": {
            **{
                name: {"level": _at_least(logging.WARNING, level)}
                for name in ("httpx", "httpx2", "httpcore")
            },
            **{name: {"level": _at_least(logging.INFO, level)} for name in PAYLOADS},
            **{
                name: {"filters": [f for f, by in FILTERS.items() if name in by]}
                for name in NOTICES.keys() | REPEATED.keys()
            },
        },
    }


def setup(level: str, fmt: str) -> None:
    """The process's logging, as anew at each call: ``dictConfig`` adds a logger's filters to
    those it has, so the filters of a call before (a ``Repeats`` holding back the lines it saw
    then) are removed first."""
    for name in NOTICES.keys() | REPEATED.keys():
        logger = logging.getLogger(name)
        for ours in [f for f in logger.filters if isinstance(f, Notice | Repeats)]:
            logger.removeFilter(ours)
    logging.config.dictConfig(logging_config(level, fmt))
    # faust's "dev" lines, said at INFO whatever the level once ``DEVLOG`` is in the
    # environment (mode reads it at import), write records whole ("DROPPED MESSAGE ROFF %r:
    # k=%r v=%r", "Skipping message %r"): never said, as the loggers above are held
    os.environ.pop("DEVLOG", None)
    if (mode_logging := sys.modules.get("mode.utils.logging")) is not None:
        mode_logging.DEVLOG = False  # type: ignore[attr-defined]


def announce(server: str, *, echo: bool = False) -> Callable[[str], None]:
    """aiohttp's ``run_app`` banner ("======== Running on http://HOST:PORT ========"), which
    names the port bound (with port 0, the one the system chose), as a log record of ours
    naming ``server`` and, with ``echo``, a line on stdout (the console's, for its user)."""

    def say(banner: str) -> None:
        urls = ", ".join(re.findall(r"https?://[^\s,]+", banner)) or banner.strip()
        logging.getLogger(f"streams.{server}").info("%s on %s", server, urls)
        if echo:
            print(f"talkstream {server} on {urls}/", flush=True)

    return say
