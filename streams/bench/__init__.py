"""``talkstream bench``: the pipeline measured side by side with its baselines.

Modules: :mod:`~streams.bench.command` (the CLI), :mod:`~streams.bench.run` (the phases in
order), :mod:`~streams.bench.system` (the processes), :mod:`~streams.bench.load` (webhook
load), :mod:`~streams.bench.observe` (lifecycle topic, stand-ins), :mod:`~streams.bench.pipeline`
(talkstream's phases), :mod:`~streams.bench.relay` and :mod:`~streams.bench.inline` (the
baselines) with :mod:`~streams.bench.baselines` (their drivers), :mod:`~streams.bench.report`
and :mod:`~streams.bench.markdown` (results, BENCHMARKS.md).
"""

from streams.bench.command import register

__all__ = ["register"]
