"""Each command's --help says what every option is and what it defaults to."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from bench.command import bench as harness
from streams.cli import main


def _options(command: click.Command, path: str) -> Iterator[tuple[str, click.Option]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _options(sub, f"{path} {name}")
        return
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            yield path, param


def test_every_option_of_every_command_says_what_it_is() -> None:
    """`audit --email`, `dev --openai-port`, `standin ... --host` showed a bare name (or a bare
    default) in their --help."""
    bare = [
        f"{path} {param.opts[0]}"
        for command, name in ((main, "talkstream"), (harness, "talkstream bench"))
        for path, param in _options(command, name)
        if not (param.help or "").strip()
    ]
    assert bare == []


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("--requests", "requests"),
        ("--clients", "clients"),
        ("--llm-latency", "llm_latency"),
        ("--latency-requests", "paced_requests"),
        ("--capacity-requests", "capacity_requests"),
        ("--burst-people", "burst_people"),
        ("--neighbour-requests", "neighbour_requests"),
        ("--neighbour-rps", "neighbour_rps"),
        ("--workers", "workers"),
        ("--partitions", "partitions"),
    ],
)
def test_bench_help_states_the_size_each_preset_runs(option: str, field: str) -> None:
    """The options default to None, which the preset fills in: --help stated no default, so
    an operator could not tell how many webhooks a run (or --quick) sends."""
    from bench.config import BenchConfig

    (param,) = [p for p in harness.params if option in p.opts]
    full, quick = (getattr(BenchConfig.preset(mode), field) for mode in ("full", "quick"))
    stated = f"default: {full:,}" + ("" if quick == full else f"; --quick: {quick:,}")
    assert f"[{stated}]" in (param.help or "")


def test_replay_help_says_its_database_url_has_no_default() -> None:
    """Every other --database-url defaults to the workers' projection; replay's has none (it
    builds a fresh one), which its help did not say: "give --database-url" came as a surprise."""
    (param,) = [p for p in main.commands["replay"].params if p.name == "database_url"]
    assert "required without --verify: no default" in (param.help or "")


def test_replay_help_says_until_is_a_rebuilds() -> None:
    """``--until`` cuts a rebuild only; its help did not say so, and ``--verify --until`` is
    refused (``test_projection_cli``): the help says both."""
    (param,) = [p for p in main.commands["replay"].params if p.name == "until"]
    assert (param.help or "").startswith("a rebuild only (--verify refuses it): ")
