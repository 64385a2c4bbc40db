"""The bench's warm-up against an ingress of the test's own: webhooks answered 503 (the first
ones after the topics were made can find a partition without a leader yet: nothing written)
are sent again, as Talkable does, rather than ending the run."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import pipeline
from bench.config import BenchConfig
from bench.pipeline import Context, Pipeline


class Ingress:
    """Answers 503 to its first ``refuse`` webhooks, then 202 with an id of the body."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.answers: list[int] = []

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.read()
        if len(self.answers) < self.refuse:
            self.answers.append(503)
            return web.json_response({"errors": []}, status=503, headers={"Retry-After": "5"})
        self.answers.append(202)
        return web.json_response({"request_id": hashlib.sha256(body).hexdigest()[:32]}, status=202)


class Ended:
    """Every accepted request ended at once."""

    def __init__(self) -> None:
        self.waited: list[list[str]] = []

    async def wait_terminal(self, ids: Any, timeout: float, tick: Any) -> list[str]:
        self.waited.append(list(ids))
        return []


async def warm_up(ingress: Ingress) -> tuple[float, Ended]:
    app = web.Application()
    app.router.add_post("/chat-gpt/generate", ingress.generate)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        system = SimpleNamespace(
            ingress_url=str(server.make_url("/chat-gpt/generate")),
            talkable_root="http://127.0.0.1:1",
            set_llm_latency=lambda _: None,
        )
        ended = Ended()
        ctx = Context(config=BenchConfig.preset("tiny"), run="r", now=1_700_000_000,
                      progress=None)  # type: ignore[arg-type]  # fmt: skip
        seconds = await Pipeline(ctx, system, ended).warm_up(count=6)  # type: ignore[arg-type]
        return seconds, ended
    finally:
        await server.close()


async def test_a_warm_up_webhook_answered_503_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "RETRY_AFTER_S", 0.01)
    ingress = Ingress(refuse=2)
    _, ended = await warm_up(ingress)
    assert ingress.answers == [503, 503, *[202] * 6]
    [ids] = ended.waited
    assert len(set(ids)) == 6


async def test_a_warm_up_that_is_never_accepted_says_what_it_was_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "RETRY_AFTER_S", 0.01)
    with pytest.raises(RuntimeError, match=r"0 of 6 webhooks accepted in 12 tries .*\{503: 72\}"):
        await warm_up(Ingress(refuse=10_000))
