"""The processes talkstream starts itself (the dev supervisor's children, the worker's
projector) run talkstream's own code whatever directory they were started in."""

from __future__ import annotations

import subprocess
from pathlib import Path

from streams.runtime import child_process

SHADOW = "raise SystemExit('imported from the working directory: {}')\n"


def test_a_child_runs_talkstream_even_beside_a_models_py_or_a_streams_py(tmp_path: Path) -> None:
    """``talkstream dev`` run in a project directory that holds a ``models.py`` (or a
    ``streams/``) started children that imported it instead of talkstream's own, and failed."""
    for name in ("models", "streams"):
        (tmp_path / f"{name}.py").write_text(SHADOW.format(name))
    done = subprocess.run(
        child_process("--help"), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "projector" in done.stdout
