"""``talkstream bench --render`` (and the rewrite after a run) never drops a measured section of
BENCHMARKS.md because the results directory it was pointed at lacks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import report
from bench.command import bench


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(report.DOC.read_text())
    monkeypatch.setattr(report, "DOC", path)
    return path


def test_rendering_from_a_directory_without_results_is_refused_and_changes_nothing(
    tmp_path: Path, doc: Path
) -> None:
    before = doc.read_text()
    assert "## full run" in before and "## quick run" in before
    empty = tmp_path / "results-typo"
    empty.mkdir()

    result = CliRunner().invoke(bench, ["--render", "--results-dir", str(empty)])

    assert result.exit_code == 1
    assert f"no results in {empty}" in result.output
    assert doc.read_text() == before


def test_results_of_one_mode_elsewhere_replace_that_section_and_keep_the_other(
    tmp_path: Path, doc: Path
) -> None:
    elsewhere = tmp_path / "results"
    elsewhere.mkdir()
    quick = json.loads((report.RESULTS_DIR / "latest-quick.json").read_text())
    quick["meta"]["started_at"] = "2030-01-02T03:04:05+00:00"
    (elsewhere / "latest-quick.json").write_text(json.dumps(quick))

    result = CliRunner().invoke(bench, ["--render", "--results-dir", str(elsewhere)])

    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert "## quick run, 2030-01-02T03:04:05+00:00" in text
    full = json.loads((report.RESULTS_DIR / "latest-full.json").read_text())
    assert f"## full run, {full['meta']['started_at']}" in text, "the full run's section stays"


@pytest.mark.parametrize(
    "options", [["--quick"], ["--requests", "300", "--no-baselines"], ["--no-doc"]]
)
def test_a_render_refuses_the_options_of_a_run_it_would_ignore(
    doc: Path, options: list[str]
) -> None:
    before = doc.read_text()

    result = CliRunner().invoke(bench, ["--render", *options])

    assert result.exit_code == 2
    assert "runs nothing" in result.output
    assert all(option in result.output for option in options if option.startswith("--"))
    assert doc.read_text() == before


def test_the_committed_document_is_what_a_render_writes(doc: Path) -> None:
    """BENCHMARKS.md is generated: hand-written rounds go to bench/PROFILE.md, which every
    render includes. Two rounds written into BENCHMARKS.md itself were dropped by the next
    run's rewrite, unseen."""
    committed = doc.read_text()

    result = CliRunner().invoke(bench, ["--render"])

    assert result.exit_code == 0, result.output
    assert doc.read_text() == committed, "edit bench/PROFILE.md (or bench/markdown.py), then render"
