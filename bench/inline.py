"""Baseline (b): the hosted integration's approach, one inline HTTP handler, no Kafka.

Per webhook: parse (the same contract code as our ingress) → trigger → usage check against the
Talkable snapshot *in the request* → OpenAI → Talkable → answer. It uses talkstream's own OpenAI
and Talkable adapters, and its garbage is collected as talkstream's processes' is
(``streams.heap``), so the difference to the pipeline is the architecture, not the client code
or the process's settings. With no state of its own it cannot see other webhooks in flight: a
burst of webhooks for one person carrying the same stale snapshot all pass the limit check.

Run it with ``python -m bench.inline --port N --openai-url U --talkable-url U``.
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from models.events import ChatRequest, PublishCompletion
from models.params import (
    ParamsError,
    completion_event_number,
    parse_request,
    request_fingerprint,
    trigger_met,
)
from streams import heap
from streams.clients.openai_chat import ChatClient
from streams.clients.talkable import TalkableClient
from streams.errors import UpstreamError
from streams.ingress import HTTP_STATUS

MAX_BODY_BYTES = 256 * 1024
CHAT = web.AppKey("chat", ChatClient)
TALKABLE = web.AppKey("talkable", TalkableClient)


async def generate(request: web.Request) -> web.Response:
    try:
        body = await request.read()
        params = parse_request(
            request.content_type, body, request.query, max_body_bytes=MAX_BODY_BYTES
        )
    except ParamsError as exc:
        return web.json_response(exc.body(), status=HTTP_STATUS[exc.problem])
    request_id = request_fingerprint(params)
    if not trigger_met(params.trigger_criteria):
        return web.json_response({"request_id": request_id, "state": "skipped"})
    props: dict[str, str] = {}
    limit = params.usage_limit
    if limit is not None:  # the snapshot is all it knows
        start, count = limit.start_time, limit.current_usage_amount
        if limit.current_time - start >= limit.duration_in_seconds:
            start, count = limit.current_time, 0
        if count >= limit.amount:
            return web.json_response({"request_id": request_id, "state": "limited"})
        props = {"__start_time": str(start), "__current_usage_amount": str(count + 1)}
    openai = params.openai
    chat = ChatRequest(
        model=openai.model,
        messages=[m.model_dump() for m in openai.messages],
        max_tokens=openai.max_tokens,
        extra=openai.passthrough(),
    )
    try:
        completion, _ = await request.app[CHAT].complete(chat, openai.api_key.get_secret_value())
        command = PublishCompletion(
            request_id=request_id,
            person=params.person,
            site=params.site,
            email=params.email,
            attempt=1,
            issued_at_ms=0,
            event_number=completion_event_number(params.event_number, request_id),
            custom_properties={"generated_text": completion.text, **props},
            talkable_api_key="inline",  # not sealed here: the key is passed beside it
        )
        await request.app[TALKABLE].publish(command, params.api_key.get_secret_value())
    except UpstreamError as exc:
        return web.json_response({"request_id": request_id, "error": str(exc)}, status=502)
    return web.json_response({"request_id": request_id, "state": "published"})


def build_app(openai_url: str, talkable_url: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES + 1)
    app[CHAT] = ChatClient(openai_url, 60.0)  # one call each, as the hosted integration does
    app[TALKABLE] = TalkableClient(talkable_url, 15.0)
    app.router.add_post("/chat-gpt/generate", generate)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def close(app: web.Application) -> None:
        await app[CHAT].close()
        await app[TALKABLE].close()

    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--openai-url", required=True)
    parser.add_argument("--talkable-url", required=True)
    args = parser.parse_args()
    # logs like our ingress does (INFO, aiohttp's access log), so both pay the same
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = build_app(args.openai_url, args.talkable_url)
    heap.settle()  # collected as talkstream's processes are: the difference is the design
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
