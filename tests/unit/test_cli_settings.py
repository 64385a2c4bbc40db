"""Settings that do not validate end every command with one line that names each variable,
not with a traceback, and without repeating the value (it could be a secret)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from streams.cli import main


@pytest.mark.parametrize("command", [["projector"], ["worker"], ["stats"], ["replay", "--verify"]])
def test_an_invalid_setting_is_named_in_one_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALKSTREAM_PROJECTOR", "sideways-s3cr3t")
    monkeypatch.setenv("TALKSTREAM_PRODUCER_LINGER_MS", "soon")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: invalid settings: ")
    assert "TALKSTREAM_PROJECTOR: Input should be 'worker', 'process' or 'off'" in result.output
    assert "TALKSTREAM_PRODUCER_LINGER_MS: Input should be a valid integer" in result.output
    assert "sideways-s3cr3t" not in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
