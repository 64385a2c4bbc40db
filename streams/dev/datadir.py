"""The data directory of a local run (``TALKSTREAM_DATA_DIR``, default ``.data``): the hold a
``talkstream dev`` has on it while it runs (``dev.lock``), and its removal by ``make clean``
(``python -m streams.dev.clean``).

A hold lasts as long as its run: a refused start (another run holds the directory, an address
taken, a setting refused) leaves no ``dev.lock`` behind, nor the directory if it made it; a
run that ends removes its ``dev.lock``. Only a run that holds the lock removes it: a refused
second run leaves the first one's alone."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

LOCK = "dev.lock"


class DevRefused(Exception):
    """``talkstream dev`` cannot start: the reason, one line for its user."""


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (a run that ended between our open and
    our lock removed it: a run after us would make and hold another)."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[IO[str]]:
    """This run's hold on ``data_dir`` while the ``with`` lasts (the lock is the kernel's,
    released however the process ends; the file, with this run's pid, is removed with it);
    :class:`DevRefused` naming the holder's pid if another run has it, its file left alone."""
    made = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK
    try:
        while True:
            lock, holder = take_lock(path)
            if lock is None:
                raise DevRefused(
                    f"another talkstream dev runs on {data_dir} (pid {holder}): stop it first "
                    "(Ctrl-C where it runs), or give this one its own TALKSTREAM_DATA_DIR"
                )
            if _same_file(lock, path):
                break
            lock.close()
        try:
            yield lock
        finally:
            path.unlink(missing_ok=True)  # still held: no other run holds this file
            lock.close()
    finally:
        if made:  # a refused start leaves nothing (a run that wrote into it leaves that)
            with contextlib.suppress(OSError):
                data_dir.rmdir()


def dev_holder(data_dir: Path) -> str | None:
    """The pid a running ``talkstream dev`` wrote in ``data_dir``'s lock (``"unknown"`` if it
    wrote none yet); None when no run holds it."""
    return lock_holder(data_dir / LOCK)


# the locks a worker and a projector hold in their state folder while they run
# (``streams.tabledir.hold_table_dir``: ``<data dir>/worker/<app id>/<worker name>/<role>.lock``)
ROLES = ("worker", "projector")


def state_holders(data_dir: Path) -> list[tuple[str, str, Path]]:
    """The workers and projectors running on ``data_dir``: (their pid, role, state folder),
    each pid once (a worker whose projector is a task of its own holds both locks), by
    folder. A folder whose lock no process holds (one that stopped left its pid) is none."""
    found: dict[str, tuple[str, str, Path]] = {}
    for folder in sorted(data_dir.glob("worker/*/*")):
        for role in ROLES:
            pid = lock_holder(folder / f"{role}.lock")
            if pid is not None:
                key = pid if pid != "unknown" else f"{folder}/{role}"
                found.setdefault(key, (pid, role, folder))
    return list(found.values())


def take_lock(path: Path) -> tuple[IO[str] | None, str]:
    """The lock file at ``path`` (made if missing) held by this process, this process's pid
    written in it, and that pid; or None and the pid another process holding it wrote
    (``"unknown"`` if it wrote none yet). The lock is the kernel's: released however the
    process ends (a SIGKILL too), the file left with the pid of the last one that held it."""
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        return None, holder
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock, str(os.getpid())


def lock_holder(path: Path) -> str | None:
    """The pid written in the lock file at ``path`` by the process holding it (``"unknown"``
    if it wrote none yet); None when no process holds it (or there is no such file)."""
    try:
        lock = path.open("r")
    except (FileNotFoundError, NotADirectoryError):
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return lock.read().strip() or "unknown"
        return None
