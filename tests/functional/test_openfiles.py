"""A process may hold as many sockets as its calls in flight (``streams.openfiles``): the
executors and the stand-ins raise their soft limit on open files to the hard one at start, and
say when even that is below what the settings ask. Each case runs in a process of its own,
started with a low soft limit (1,024 is many systems' default, below the generator's default
2,048 calls at once), as a service under such a limit would."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from streams.runtime import child_process

ROOT = Path(__file__).resolve().parents[2]


def limited(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run(code: str, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limited(soft, hard),
        check=True,
    )


SAY_LIMIT = """
import logging, resource
from streams import openfiles
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
print(openfiles.raise_limit({needed}, setting="THE_SETTING"),
      *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_limit_is_raised_to_the_hard_one_without_a_word_when_that_suffices() -> None:
    done = run(SAY_LIMIT.format(needed=300), soft=64, hard=1000)
    assert done.stdout.split() == ["1000", "1000", "1000"], done
    assert "WARNING" not in done.stderr, done.stderr


def test_a_hard_limit_below_what_the_settings_ask_is_named_with_the_setting() -> None:
    done = run(SAY_LIMIT.format(needed=3000), soft=64, hard=1000)
    assert done.stdout.split() == ["1000", "1000", "1000"], done
    assert (
        "WARNING open files: this process may hold 1000 (its hard limit; `ulimit -Hn`, "
        "systemd's LimitNOFILE=), and THE_SETTING asks for about 3000" in done.stderr
    ), done.stderr


def test_a_soft_limit_above_what_is_needed_is_never_lowered() -> None:
    done = run(SAY_LIMIT.format(needed=10), soft=500, hard=500)
    assert done.stdout.split() == ["500", "500", "500"], done
    assert "WARNING" not in done.stderr, done.stderr


BUILD_EXECUTORS = """
import logging, resource, tempfile
from pathlib import Path
from unittest.mock import MagicMock
from streams.app import build_executors
from tests.functional.conftest import make_settings, secret_box
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
settings = make_settings(
    Path(tempfile.mkdtemp()), generator_max_in_flight={generator}, publisher_max_in_flight=20
)
built = build_executors(
    settings, MagicMock(), MagicMock(), MagicMock(), secret_box(), MagicMock(), MagicMock()
)
print(len(built), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_executors_may_hold_a_socket_for_each_call_they_make_at_once() -> None:
    """Built (in the worker or in their process), the executors raise the limit: 1,000 calls
    at once where the process started allowed 64 files."""
    done = run(BUILD_EXECUTORS.format(generator=1000), soft=64, hard=4096)
    assert done.stdout.split() == ["2", "4096", "4096"], done
    assert "WARNING" not in done.stderr, done.stderr
    short = run(BUILD_EXECUTORS.format(generator=5000), soft=64, hard=4096)
    assert (
        "TALKSTREAM_GENERATOR_MAX_IN_FLIGHT + TALKSTREAM_PUBLISHER_MAX_IN_FLIGHT asks for "
        "about 5276" in short.stderr
    ), short.stderr


@pytest.fixture
def standin() -> Iterator[str]:
    """The OpenAI stand-in (``talkstream standin openai``), started where a process may open
    64 files, its hard limit 4,096; each completion takes half a second."""
    process = subprocess.Popen(
        child_process("standin", "openai", "--port", "0", "--latency", "0.5"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limited(64, 4096),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("openai stand-in at "), (line, process.stderr)
        yield line.removeprefix("openai stand-in at ").strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_a_stand_in_answers_more_calls_at_once_than_its_start_allowed_files(
    standin: str,
) -> None:
    """300 completions at once from 300 connections: each answered (before, the stand-in could
    not accept the connections past its 64 files)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> int:
            async with session.post(
                f"{standin}/chat/completions",
                json=body,
                headers={"Authorization": "Bearer sk-test-openfiles-0001"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(call() for _ in range(300)))
    assert statuses == [200] * 300
