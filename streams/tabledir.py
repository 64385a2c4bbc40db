"""A worker's state folder (``<data dir>/worker/<app id>/<worker name>/``) and the holds its
processes take on it while they run: the worker, its projector and its executors, each a lock
of its own. Apart from :mod:`streams.app` so that the projector's process takes its own
without importing the worker's whole composition (the faust app, every agent, the OpenAI
client): 0.8 s of CPU at each of its starts. (The executors' process still imports it, for
the executors it builds.)"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from streams.dev.datadir import take_lock
from streams.errors import ConfigError
from streams.settings import Settings


def table_dir(settings: Settings) -> Path:
    """This worker's local table store: one per app id, since the store's offsets are those of
    its app's changelog (another app's store on the same data would be refused by faust's
    recovery as data removed from the topics)."""
    return settings.data_dir / "worker" / settings.app_id / settings.worker_name


# what each kind of process holds in its state folder while it runs, and why two may not
HELD_BY = {
    "worker": "its table store's folder, and its member id in the consumer groups",
    "projector": "its member id in the projector's consumer group, the worker's own projector's"
    " too (TALKSTREAM_PROJECTOR process or worker)",
    "executors": "their member ids in the generator's and the publisher's consumer groups, "
    "the worker's own executors' too (TALKSTREAM_EXECUTORS process or worker)",
}


def hold_table_dir(
    settings: Settings, role: str = "worker", made: list[Path] | None = None
) -> IO[str]:
    """This worker's (or projector's) hold on its state folder (:func:`table_dir`) for as long
    as it runs, in ``<role>.lock``: the lock is the kernel's, released however the process
    ends (a SIGKILL too), the file left with the pid of the last one that held it. A second
    one started on the same folder (the same ``DATA_DIR``, ``APP_ID`` and ``WORKER_NAME``: the
    README's scale out beside a running worker without a ``WORKER_NAME`` of its own, or a
    ``talkstream projector`` beside a worker running its own) is refused here, before it joins
    a group: it would take the first one's member id in its consumer groups (the name and the
    host), the two fencing each other out every few seconds, and a second worker would end
    half a minute later with RocksDB's traceback (the table store the first one holds).

    What it makes (folders, then the lock file) is added to ``made``, if given, in that
    order, for :func:`give_back` to remove when the process is refused at its start."""
    folder = table_dir(settings)
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}.lock"
    new = not path.exists()
    lock, holder = take_lock(path)
    if made is not None:
        made.extend(reversed(missing))  # the outermost first, as made
        if lock is not None and new:
            made.append(path)
    if lock is None:
        who = "executors process" if role == "executors" else role
        raise ConfigError(
            f"another {who} runs on {folder} (pid {holder}): give each {who} on a host its "
            f"own TALKSTREAM_WORKER_NAME (this one's is {settings.worker_name!r}: "
            f"{HELD_BY[role]})"
        )
    return lock


def give_back(held: list[IO[str]], made: list[Path]) -> None:
    """A start refused (no key, Kafka out of reach or refusing) leaves nothing behind: the
    holds on its folders released, and what :func:`hold_table_dir` made for them removed, the
    last made first (a lock file while still held, so no other start takes a lock on a file
    gone), a folder only while empty (another process's files in it since are kept), and
    nothing that was there before this start. It left ``DATA_DIR/worker/<app>/<name>/`` with
    a lock file in it, for a worker that never ran."""
    for path in reversed(made):
        try:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
        except OSError:  # not empty (or gone): its parents are not either
            break
    for lock in held:
        lock.close()
