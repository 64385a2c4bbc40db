"""The machine a run measured, and the CPU each process used during each phase (Linux)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpuinfo_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 1024**2, 1) if match else None


def _java_version() -> str | None:
    java = shutil.which("java")
    if java is None:
        return None
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0].strip() if lines else None


def describe(kafka: str) -> dict[str, Any]:
    """The machine, and ``kafka``: the broker's version (or where an existing one is)."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpuinfo_model(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "kafka": kafka,
        "loadavg_at_start": _loadavg(),
    }


def source_tree(root: Path) -> str | None:
    """The commit a run measured (abbreviated), saying so when the code differs from it (the
    package, the models or the harness; not the results a run writes); None outside a git
    checkout."""
    git = shutil.which("git")
    if git is None:
        return None
    paths = ["streams", "models", "bench", ":(exclude)bench/results"]
    try:
        head = subprocess.run([git, "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        changed = subprocess.run(
            [git, "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", *paths],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0 or changed.returncode != 0:
        return None
    tree = head.stdout.strip()
    return f"{tree} with uncommitted changes" if changed.stdout.strip() else tree


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class CpuMeter:
    """Per phase: each watched process's CPU seconds, and as a share of one core."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {"bench": os.getpid()}
        self.phases: dict[str, dict[str, Any]] = {}
        self._start: tuple[float, dict[str, float | None]] | None = None

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.pids[name] = pid

    def begin(self) -> None:
        self._adopt_children()
        self._start = (time.monotonic(), {n: cpu_seconds(p) for n, p in self.pids.items()})

    def _adopt_children(self) -> None:
        """A worker's children are watched too, as ``<name>-<their last argument>`` (its
        projector process: ``worker0-projector``), so that their CPU counts as the worker's."""
        for name, pid in list(self.pids.items()):
            if not name.startswith("worker") or "-" in name:
                continue
            for child in children(pid):
                try:
                    argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                last = next((a.decode() for a in reversed(argv) if a), str(child))
                self.pids.setdefault(f"{name}-{last}", child)

    def end(self, phase: str) -> None:
        if self._start is None:
            return
        started, before = self._start
        wall = time.monotonic() - started
        used: dict[str, float] = {}
        for name, pid in self.pids.items():
            now, then = cpu_seconds(pid), before.get(name)
            if now is not None and then is not None:
                used[name] = round(now - then, 2)
        self.phases[phase] = {
            "wall_s": round(wall, 2),
            "loadavg": _loadavg(),
            "cpu_s": used,
            "share": {n: round(s / wall, 2) for n, s in used.items()} if wall > 0 else {},
        }
        self._start = None
