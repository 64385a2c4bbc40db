"""Logging for every talkstream process: plain text, or one JSON object per line
(``--log-format json`` / ``TALKSTREAM_LOG_FORMAT=json``, python-json-logger). Context travels
as ``extra={...}`` (request_id, site, state, …) and becomes JSON keys. Never a secret."""

from __future__ import annotations

import logging.config
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


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
        "loggers": {name: {"level": "WARNING"} for name in ("httpx", "httpx2", "httpcore")},
    }


def setup(level: str, fmt: str) -> None:
    logging.config.dictConfig(logging_config(level, fmt))
