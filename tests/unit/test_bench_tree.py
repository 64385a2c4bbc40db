"""A benchmark's results say which commit they measured, and whether the code differed from it
(the package, the models, the harness; not the results a run writes itself)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench import markdown
from bench.machine import source_tree


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_run_names_its_commit_and_says_when_the_code_differs(tmp_path: Path) -> None:
    assert source_tree(tmp_path) is None, "not a git checkout"
    git(tmp_path, "init", "-q")
    for path in ("streams/worker.py", "bench/results/latest-quick.json", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("first\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "1")
    head = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert source_tree(tmp_path) == head

    (tmp_path / "bench/results/latest-quick.json").write_text("a run's own results\n")
    (tmp_path / "README.md").write_text("prose\n")
    (tmp_path / "streams/new.py").write_text("untracked\n")
    assert source_tree(tmp_path) == head, "results, prose and untracked files are not the code"

    (tmp_path / "streams/worker.py").write_text("changed\n")
    assert source_tree(tmp_path) == f"{head} with uncommitted changes"


def test_the_tree_and_the_machine_are_rendered_when_a_result_has_them() -> None:
    machine = {
        "nproc": 2,
        "cpu_model": "Some CPU",
        "memory_gib": 23.5,
        "python": "3.11.7",
        "java": "openjdk 17",
        "kafka": "4.4.0 (embedded)",
        "loadavg_at_start": [0.5],
    }
    replay = {
        "started_at": "2026-12-01T22:11:35+00:00",
        "command": "python -m bench.replay",
        "lifecycle_events": 6,
        "requests_messages": 3,
        "requests": 1,
        "processes": 2,
        "read_only": {"events": 6, "seconds": 0.1, "events_per_second": 60, "runs": [60]},
    }
    assert "on tree" not in markdown.replay_section(replay), "an older result has none"
    text = markdown.replay_section({**replay, "tree": "abc1234", "machine": machine})
    assert "`python -m bench.replay` on tree abc1234:" in text
    assert "Machine: 2 CPUs (Some CPU)" in text
