"""The ``bench`` command (added to ``talkstream`` by :func:`register`)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from bench.config import BenchConfig

if TYPE_CHECKING:
    from bench.load import Tick


@contextlib.contextmanager
def _bar(label: str, total: int) -> Iterator[Tick]:
    with click.progressbar(length=total, label=label.ljust(34), file=sys.stderr) as bar:
        yield bar.update


def _say(message: str) -> None:
    click.echo(message, err=True)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a CI job's timeout, ``kill``) ends a run as Ctrl-C does, through the ``finally``
    blocks that stop the broker, the stand-ins and the pipeline's processes, which would
    otherwise outlive the command. It goes to whatever handles SIGINT at the moment: inside a
    phase, asyncio's runner, which cancels the phase (a KeyboardInterrupt raised there could
    land in a weakref callback, which swallows it, and the run would go on)."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def _argv(params: dict[str, Any]) -> list[str]:
    """The options as given, for the report's reproduce line."""
    context = click.get_current_context()
    argv = ["talkstream", "bench"]
    for name, value in params.items():
        source = context.get_parameter_source(name)
        if source is not click.core.ParameterSource.COMMANDLINE:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        else:
            argv += [flag, str(value)]
    return argv


POSITIVE = click.IntRange(min=1)  # every phase runs: none can be empty


def _preset(field: str) -> str:
    """An option's default as the presets give it (full, and --quick when it differs): the
    option's own default is None, which stands for the preset's."""
    full, quick = (getattr(BenchConfig.preset(mode), field) for mode in ("full", "quick"))
    said = f"default: {full:,}"
    return f"[{said}]" if quick == full else f"[{said}; --quick: {quick:,}]"


@click.command("bench")
@click.option("--quick", is_flag=True, help="a minute or two: fewer webhooks, capacity phase 1,000")
@click.option("--tiny", is_flag=True, hidden=True, help="seconds: the smoke test's sizes")
@click.option(
    "--requests", type=POSITIVE, help=f"webhooks in the throughput phase {_preset('requests')}"
)
@click.option(
    "--clients", type=POSITIVE, help=f"concurrent clients driving the ingress {_preset('clients')}"
)
@click.option(
    "--llm-latency",
    type=click.FloatRange(min=0),
    help=f"OpenAI stand-in latency (s), capacity aside {_preset('llm_latency')}",
)
@click.option(
    "--latency-rate",
    type=click.FloatRange(min=0, min_open=True),
    help="the latency phase's rate (webhooks/s) [default: half the measured throughput]",
)
@click.option(
    "--latency-requests",
    type=POSITIVE,
    help=f"webhooks in the latency phase {_preset('paced_requests')}",
)
@click.option(
    "--capacity-requests",
    type=POSITIVE,
    help=f"webhooks (and people) in the capacity phase {_preset('capacity_requests')}",
)
@click.option(
    "--burst-people",
    type=POSITIVE,
    help=f"people in the burst phase (50 webhooks each) {_preset('burst_people')}",
)
@click.option(
    "--neighbour-requests",
    type=POSITIVE,
    help=f"webhooks of the blast on a limited key {_preset('neighbour_requests')}",
)
@click.option(
    "--neighbour-rps",
    type=click.FloatRange(min=0, min_open=True),
    help=f"the blasting key's limit (requests/s) {_preset('neighbour_rps')}",
)
@click.option("--workers", type=POSITIVE, help=f"talkstream worker processes {_preset('workers')}")
@click.option(
    "--partitions", type=POSITIVE, help=f"partitions of every topic {_preset('partitions')}"
)
@click.option(
    "--executors",
    type=click.Choice(["worker", "process"]),
    help="where each worker runs its generator and publisher (TALKSTREAM_EXECUTORS): in a "
    "child process of their own, or in it [default: process, whatever the shell sets]",
)
@click.option("--bootstrap", help="use this Kafka instead of starting an embedded broker")
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="also measure the raw Kafka relay and the inline handler beside the pipeline "
    "(--no-baselines: the pipeline alone, and BENCHMARKS.md is not rewritten)",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where the JSON goes [default: bench/results]",
)
@click.option(
    "--keep",
    is_flag=True,
    help="keep the logs and data of the run (and its topics and consumer groups on "
    "--bootstrap's broker)",
)
@click.option(
    "--render",
    is_flag=True,
    help="only rewrite BENCHMARKS.md from the latest results (of --results-dir, a mode it "
    "lacks from bench/results)",
)
@click.option("--no-doc", is_flag=True, help="do not rewrite BENCHMARKS.md after the run")
def bench(
    quick: bool,
    tiny: bool,
    requests: int | None,
    clients: int | None,
    llm_latency: float | None,
    latency_rate: float | None,
    latency_requests: int | None,
    capacity_requests: int | None,
    burst_people: int | None,
    neighbour_requests: int | None,
    neighbour_rps: float | None,
    workers: int | None,
    partitions: int | None,
    executors: str | None,
    bootstrap: str | None,
    baselines: bool,
    results_dir: Path | None,
    keep: bool,
    render: bool,
    no_doc: bool,
) -> None:
    """Measure the pipeline side by side with a raw Kafka relay and an inline handler.

    Starts its own broker (or uses --bootstrap), stand-ins, worker and ingress as processes on
    a private app id; writes bench/results/*.json and rewrites BENCHMARKS.md.
    """
    from bench import markdown, report
    from bench.config import BenchConfig
    from bench.run import run_bench
    from streams.errors import TalkstreamError

    directory = results_dir or report.RESULTS_DIR
    if render:
        context = click.get_current_context()
        given = sorted(
            # as typed: a flag's off switch (--no-baselines) when it was turned off
            (option.secondary_opts or option.opts)[0]
            if isinstance(option, click.Option) and option.is_flag and not context.params[name]
            else option.opts[0]
            for option in context.command.params
            if (name := option.name or "") not in ("render", "results_dir")
            and context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        )
        if given:  # a render runs nothing: each would be ignored without a word
            raise click.UsageError(
                f"--render rewrites BENCHMARKS.md from every mode's latest results and runs "
                f"nothing: {', '.join(given)} would do nothing (only --results-dir goes with it)"
            )
        if not report.load_latest(directory):  # a mistyped directory would empty the document
            raise click.ClickException(
                f"no results in {directory} (latest-full.json, latest-quick.json): "
                f"{report.DOC.name} is unchanged"
            )
        report.DOC.write_text(markdown.document(report.document_results(directory)))
        click.echo(f"wrote {report.DOC}")
        return
    argv = _argv(dict(click.get_current_context().params))
    config = BenchConfig.preset(
        "tiny" if tiny else "quick" if quick else "full",
        requests=requests,
        clients=clients,
        llm_latency=llm_latency,
        paced_rate=latency_rate,
        paced_requests=latency_requests,
        capacity_requests=capacity_requests,
        burst_people=burst_people,
        neighbour_requests=neighbour_requests,
        neighbour_rps=neighbour_rps,
        workers=workers,
        partitions=partitions,
        executors=executors,
        bootstrap=bootstrap,
        baselines=baselines,
    )
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = run_bench(config, progress=_bar, say=_say, keep=keep)
    except TalkstreamError as exc:  # ours say what to do on one line: Kafka out of reach, ...
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    result["meta"]["argv"] = argv
    click.echo(markdown.table(result))
    if config.mode != "tiny" or results_dir is not None:  # a smoke run leaves no results
        click.echo(f"\nresults: {report.save(result, directory)}")
    if not no_doc and config.mode != "tiny" and config.baselines:
        report.DOC.write_text(markdown.document(report.document_results(directory)))
        click.echo(f"rewrote {report.DOC}")
    counters = result["summary"]["correctness"]
    if any(counters[name] for name in report.COUNTERS):
        raise click.ClickException(f"correctness counters are not 0: {counters}")


def register(main: click.Group) -> None:
    """Add ``bench`` to the ``talkstream`` command group."""
    main.add_command(bench)
