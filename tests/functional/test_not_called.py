"""An attempt the executor ends without calling its upstream says so on the lifecycle: a
refusal of its key, model or site remembered from a moment ago, and a request larger than
the target's whole minute of tokens, as a key that cannot be opened does
(``test_sealed_keys``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.agents.work import Generate, Publish
from streams.errors import GenerationError, PublishError, UpstreamError
from streams.upstream.jobs import Outcome, Refused
from streams.upstream.verdicts import refused_again, too_large
from tests.functional.test_sealed_keys import commands
from tests.unit.domain_builders import Ledger, generated, received


def lifecycle_of(work: Any, command: Any, error: UpstreamError) -> tuple[str, str | None, str]:
    """The failure as the executor reports it, and the event the ledger decides of it."""
    result = work.result(command, Outcome(None, error, waited_s=0.0, tries=0), now_ms=1)
    ledger = Ledger()
    ledger.send(received("r-1"))
    if work.stage == "publishing":
        ledger.send(generated("r-1"))
    [event] = ledger.send(result).events
    return event.state.value, event.error_class, event.cause


def test_a_refusal_remembered_ends_its_attempt_saying_nothing_was_called() -> None:
    """A site Talkable said a moment ago it does not have (a key OpenAI refused) ends the
    next request's attempt without a call, its message "not called: ..."; its lifecycle cause
    said "Talkable did not accept the event" ("OpenAI call failed"), as if this request's
    call had been made and refused (seen on a running system: the second webhook for a site
    Talkable does not know)."""
    generate, publish = commands()
    site = PublishError(
        "Talkable answered 404: no such site", status=404, reason="SiteNotFound", refuses="site"
    )
    key = GenerationError(
        "OpenAI answered 401 invalid_api_key", status=401, reason="Unauthorized", refuses="key"
    )
    publisher = Publish(None, None)  # type: ignore[arg-type]
    generator = Generate(None, None)  # type: ignore[arg-type]
    job = SimpleNamespace(key="r-1")  # another request's call was refused
    site_refused = refused_again(Refused(70.0, site, "r-0", 10.0), job, now=12.0)  # type: ignore[arg-type]
    key_refused = refused_again(Refused(70.0, key, "r-0", 10.0), job, now=12.0)  # type: ignore[arg-type]
    assert [
        lifecycle_of(publisher, publish, site_refused),
        lifecycle_of(generator, generate, key_refused),
    ] == [
        (
            "publish_failed",
            "SiteNotFound",
            "Talkable not called: the attempt failed before its call",
        ),
        (
            "generation_failed",
            "Unauthorized",
            "OpenAI not called: the attempt failed before its call; slot released",
        ),
    ]


def test_a_request_larger_than_its_targets_minute_ends_saying_nothing_was_called() -> None:
    """``RequestTooLarge`` (max_tokens more than the key's tokens a minute) is decided
    before any call; its lifecycle cause said "OpenAI call failed"."""
    generate, _ = commands()
    pacer = SimpleNamespace(never_fits=lambda *_: True, tokens_per_minute=1000.0)
    target = SimpleNamespace(pacer=pacer, name="openai:key/gpt-4o-mini")
    job = SimpleNamespace(probe=False, least=4096.0)
    error = too_large(target, job, now=0.0, refusal_s=60.0)  # type: ignore[arg-type]
    assert error is not None and str(error).startswith("not called: ")
    assert lifecycle_of(Generate(None, None), generate, error) == (  # type: ignore[arg-type]
        "generation_failed",
        "RequestTooLarge",
        "OpenAI not called: the attempt failed before its call; slot released",
    )
