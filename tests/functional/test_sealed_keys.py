"""A webhook's key sealed by an ingress whose ``TALKSTREAM_SECRET_KEYS`` the worker does not
share (a compose ``export`` of a new key run again, one ingress given another key) fails its
call saying which key and what to fix, never the key: in-process, the executors' work with
the ledger's own commands."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet

from models.events import GenerateText, PublishCompletion
from streams.agents.work import Generate, Publish
from streams.errors import UpstreamError
from streams.secrets import SecretBox
from streams.upstream.jobs import Outcome
from tests.unit.domain_builders import Ledger, generated, received

OPENAI_KEY, TALKABLE_KEY = "sk-sealed-elsewhere-1234", "talkable-sealed-elsewhere-5678"


def commands() -> tuple[GenerateText, PublishCompletion]:
    """The ledger's two commands of a request, their keys sealed by another deployment's key."""
    ingress = SecretBox([Fernet.generate_key()])
    ledger = Ledger()
    [generate] = ledger.send(received("r-1")).commands
    [publish] = ledger.send(generated("r-1")).commands
    assert isinstance(generate, GenerateText) and isinstance(publish, PublishCompletion)
    return (
        generate.model_copy(update={"openai_api_key": ingress.seal(OPENAI_KEY)}),
        publish.model_copy(update={"talkable_api_key": ingress.seal(TALKABLE_KEY)}),
    )


async def failure(work: Any, command: Any) -> UpstreamError:
    job = work.job(command, issued_s=0.0, origin=None, report=None)
    with pytest.raises(UpstreamError) as failed:
        await job.call()
    return failed.value


FIX = (
    "cannot be opened: the ingress that took it sealed it with a key not among this worker's "
    "TALKSTREAM_SECRET_KEYS. Give every worker and ingress the same keys (when rotating, the "
    "old key after the new one), then redrive"
)


async def test_a_key_no_key_of_the_worker_opens_names_the_key_and_the_fix() -> None:
    generate, publish = commands()
    worker = SecretBox([Fernet.generate_key()])
    called: list[str] = []

    class Unreachable:
        async def complete(self, *args: Any) -> Any:
            called.append("openai")

        async def publish(self, *args: Any) -> Any:
            called.append("talkable")

    generation = await failure(Generate(Unreachable(), worker), generate)  # type: ignore[arg-type]
    publication = await failure(Publish(Unreachable(), worker), publish)  # type: ignore[arg-type]

    assert (generation.reason, str(generation)) == (
        "SealedKey",
        f"the webhook's OpenAI key (openai.api_key) {FIX}",
    )
    assert (publication.reason, str(publication)) == (
        "SealedKey",
        f"the webhook's Talkable key (api_key) {FIX}",
    )
    assert not generation.retriable and called == []  # no call made with what is not a key


async def test_a_key_no_key_of_the_worker_opens_ends_its_request_saying_nothing_was_called() -> (
    None
):
    """The failure as the executors report it and the ledger decides it: its lifecycle cause
    says the upstream was not called (it said "OpenAI call failed" though no call was made)."""
    generate, publish = commands()
    worker = SecretBox([Fernet.generate_key()])
    causes = []
    for work, command in ((Generate(None, worker), generate), (Publish(None, worker), publish)):
        error = await failure(work, command)  # type: ignore[arg-type]
        result = work.result(command, Outcome(None, error, waited_s=0.0, tries=1), now_ms=1)
        assert result.not_called
        ledger = Ledger()
        ledger.send(received("r-1"))
        if isinstance(command, PublishCompletion):
            ledger.send(generated("r-1"))
        [event] = ledger.send(result).events
        causes.append((event.state.value, event.error_class, event.cause))
    assert causes == [
        (
            "generation_failed",
            "SealedKey",
            "OpenAI not called: the attempt failed before its call; slot released",
        ),
        ("publish_failed", "SealedKey", "Talkable not called: the attempt failed before its call"),
    ]
