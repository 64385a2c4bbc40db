"""``talkstream bench``: the pipeline measured side by side with its baselines.

Modules: :mod:`~bench.command` (the CLI), :mod:`~bench.run` (the phases in
order), :mod:`~bench.system` (the processes), :mod:`~bench.load` (webhook
load), :mod:`~bench.observe` (lifecycle topic, stand-ins), :mod:`~bench.pipeline`
(talkstream's phases), :mod:`~bench.relay` and :mod:`~bench.inline` (the
baselines) with :mod:`~bench.baselines` (their drivers), :mod:`~bench.report`
and :mod:`~bench.markdown` (results, BENCHMARKS.md).
"""

from bench.command import register

__all__ = ["register"]
