"""A Talkable site in any case is one upstream target (``models.params.site_identity``), as it
is one site for usage limits: ``Shop`` and ``shop`` were paced as two sites (twice the rate
one site gets), in two executors when their [completions] keys fell in partitions two workers
own, and a site Talkable refused under one spelling was called again under the other. Each
call still names the site as its webhook typed it. In-process: the publisher's work with the
ledger's own commands, the scheduler with a clock the test moves."""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.fernet import Fernet

from models.events import PublishCompletion
from streams.agents.outputs import target_key
from streams.agents.work import Publish
from streams.clients.talkable import Publication
from streams.errors import PublishError
from streams.secrets import SecretBox
from streams.upstream.limits import Limits
from streams.upstream.pacer import PacerConfig
from streams.upstream.scheduler import Outcome, Scheduler
from tests.unit.domain_builders import Ledger, generated, received

BOX = SecretBox([Fernet.generate_key()])


def publication(request_id: str, site: str) -> PublishCompletion:
    """The ledger's command to publish a request's text, its webhook's site typed ``site``."""
    ledger = Ledger()
    ledger.send(received(request_id))
    [publish] = ledger.send(generated(request_id)).commands
    assert isinstance(publish, PublishCompletion)
    return publish.model_copy(
        update={"site": site, "talkable_api_key": BOX.seal("talkable-key-0001")}
    )


class Talkable:
    """Answers 404 (no such site) for the sites it does not know, as Talkable does, in any
    case; records the ``site_slug`` of each call."""

    def __init__(self, unknown: str) -> None:
        self.unknown = unknown
        self.called: list[str] = []

    async def publish(self, command: PublishCompletion, api_key: str) -> tuple[Any, Limits]:
        self.called.append(command.site)
        if command.site.lower() == self.unknown:
            raise PublishError(
                f"Talkable answered 404 (it has no site `{command.site}`)",
                reason="SiteNotFound",
                status=404,
                refuses="site",
            )
        return Publication(duplicate=False), Limits()


def test_a_site_in_any_case_is_one_target_and_one_record_key() -> None:
    work = Publish(Talkable("none"), BOX)  # type: ignore[arg-type]
    spellings = [publication(f"r-{i}", site) for i, site in enumerate(("Shop", "shop", "SHOP"))]
    assert {work.target(c) for c in spellings} == {"talkable:shop"}
    assert {target_key(c) for c in spellings} == {b"shop"}  # one partition, one executor
    assert work.target(publication("r-9", "Shop-2")) != "talkable:shop"  # another site


async def test_a_site_refused_under_one_spelling_is_refused_under_every_one() -> None:
    """Talkable's 404 for ``Shop`` refuses the site a while: ``shop``'s publication, queued
    behind it, and ``SHOP``'s, taken after it, end ``SiteNotFound`` without a call; the call
    made named the site as its webhook typed it."""
    talkable = Talkable("shop")
    work = Publish(talkable, BOX)  # type: ignore[arg-type]
    config = PacerConfig(initial_window=1, circuit_after=2, open_base=5.0, burst_s=0.0)
    scheduler = Scheduler(
        "publisher", max_in_flight=4, max_wait_s=600.0, refusal_s=60.0, pacer_config=config,
        clock=lambda: 1000.0,
    )  # fmt: skip
    reports: dict[str, Outcome[Any]] = {}

    def submit(command: PublishCompletion) -> None:
        async def report(outcome: Outcome[Any]) -> None:
            reports[command.request_id] = outcome

        job = work.job(command, issued_s=1000.0, origin=None, report=report)
        scheduler.submit(work.target(command), job)

    async def settle() -> None:
        for _ in range(20):
            scheduler.dispatch()
            await asyncio.sleep(0)

    submit(publication("upper", "Shop"))
    submit(publication("lower", "shop"))
    await settle()
    submit(publication("caps", "SHOP"))
    await settle()
    assert talkable.called == ["Shop"]
    assert {rid: o.error.reason for rid, o in reports.items() if o.error} == dict.fromkeys(
        ("upper", "lower", "caps"), "SiteNotFound"
    )
    assert str(reports["caps"].error).startswith("not called: ")
    assert [t["target"] for t in scheduler.snapshot()] == ["talkable:shop"]
