"""``python -m bench [OPTIONS]``: the same as ``talkstream bench [OPTIONS]``."""

import sys

import click

from bench.command import register


@click.group()
def main() -> None:
    """talkstream benchmarks."""


register(main)
main(["bench", *sys.argv[1:]], prog_name="python -m bench")
