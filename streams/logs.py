"""Logging for every talkstream process: plain text, or one JSON object per line
(``--log-format json`` / ``TALKSTREAM_LOG_FORMAT=json``, python-json-logger). Context travels
as ``extra={...}`` (request_id, site, state, …) and becomes JSON keys. Never a secret."""

from __future__ import annotations

import logging
import logging.config
import re
from collections.abc import Callable
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REBALANCING = "Heartbeat failed for group %s because it is rebalancing"
BUFFER_FULL = "producer buffer full size "

#: WARNINGs of the libraries underneath that report normal operation, by logger: each is
#: logged as INFO (and not at all where INFO is not).
#: - aiokafka logs a heartbeat answered "rebalancing": each member of a group says it once
#:   whenever a worker joins or leaves. It is how a member learns of the rebalance.
#: - faust logs "producer buffer full size N" when more than 100 table writes wait to go to
#:   the changelog, and then sends them before the next message is taken: the ledger stores a
#:   batch's states together (up to 500 people), so a campaign blast says it at every batch.
#:   It is faust's flow control doing its work, not a fault.
NOTICES: dict[str, Callable[[str], bool]] = {
    "aiokafka.consumer.group_coordinator": REBALANCING.__eq__,
    "faust.transport.producer": lambda msg: msg.startswith(BUFFER_FULL),
}


class Notice(logging.Filter):
    """Logs one of ``NOTICES`` as INFO, not WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        says = NOTICES.get(record.name)
        if record.levelno == logging.WARNING and says and says(str(record.msg)):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class RedactBadRequests(logging.Filter):
    """aiohttp logs a request its parser refuses (a line too long, a body past a short
    Content-Length) as an ERROR with the raw bytes it choked on, which may hold keys or a
    token, and a traceback: kept as the fact alone, a WARNING (the client's fault, not ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1]
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = (
                "refused a malformed HTTP request: %s (%s)",
                (type(exc).__name__, exc.code),
            )
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_aiohttp_server_log() -> None:
    """For every aiohttp server of the process (the ingress, the console)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, RedactBadRequests) for f in server.filters):
        server.addFilter(RedactBadRequests())


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
        "filters": {"notice": {"()": Notice}},
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
            **{name: {"level": "WARNING"} for name in ("httpx", "httpx2", "httpcore")},
            **{name: {"filters": ["notice"]} for name in NOTICES},
        },
    }


def setup(level: str, fmt: str) -> None:
    logging.config.dictConfig(logging_config(level, fmt))


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
