"""``make clean``: remove the data directory the settings name (``TALKSTREAM_DATA_DIR``,
default ``.data`` in the current directory), after stopping the embedded broker that runs
from it, and say what was removed.

It removed ``./.data`` whatever the settings said: the configured directory stayed, and
the default one went, whoever's it was. It removes nothing, exit 1, when a ``talkstream dev``
holds the directory (naming its pid), or a worker or a projector started by hand holds its
state folder in it (``worker.lock``, ``projector.lock``: naming each pid and folder), when
the directory is this checkout, one of its parents, the home directory or the root, or when
it holds anything talkstream does not put there (named: another program's files, a database
file of another name): what it would delete must be talkstream's. A SQL projection elsewhere
(PostgreSQL, a SQLite file outside the directory), the dev secret key
(``~/.config/talkstream``) and the broker's jars (``~/.cache/talkstream``) stay.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from pydantic import ValidationError

from streams.dev.datadir import LOCK, dev_holder, state_holders
from streams.dev.kafka import EmbeddedKafka, KafkaLauncherError
from streams.dev.kafka_cluster import KafkaCluster
from streams.settings import Settings, describe_invalid

# what talkstream puts in its data directory: the embedded broker (one node, a cluster), the
# worker's table stores, dev's logs and lock, and the default SQLite projection of each app id
# (with SQLite's and the migration's side files)
OURS = {"kafka", "kafka-cluster", "worker", "logs", LOCK}
_SQLITE = re.compile(r".+\.sqlite3(-wal|-shm|-journal|\.lock)?")
SHOWN = 5


class Refused(Exception):
    """What keeps ``make clean`` from removing the directory, one line."""


def strangers(data_dir: Path) -> list[str]:
    """The entries of ``data_dir`` talkstream does not make, sorted."""
    return sorted(
        entry.name
        for entry in data_dir.iterdir()
        if entry.name not in OURS and not _SQLITE.fullmatch(entry.name)
    )


def check(data_dir: Path, *, here: Path, home: Path) -> None:
    """:class:`Refused` unless ``data_dir`` (which exists) is talkstream's alone to remove."""
    if not data_dir.is_dir():
        raise Refused("it is not a directory")
    if data_dir == here or data_dir in here.parents:
        raise Refused(f"it holds the current directory ({here})")
    if data_dir == home or data_dir == Path(data_dir.anchor):
        raise Refused(f"it is the {'home' if data_dir == home else 'root'} directory")
    holder = dev_holder(data_dir)
    if holder is not None:
        raise Refused(f"a talkstream dev runs on it (pid {holder}): stop it first (Ctrl-C)")
    running = state_holders(data_dir)
    if running:
        named = [
            f"{role} (pid {pid}, {folder.relative_to(data_dir)})" for pid, role, folder in running
        ]
        which = "a talkstream " + named[0] if len(named) == 1 else "talkstream " + ", ".join(named)
        raise Refused(
            f"{which} {'runs' if len(named) == 1 else 'run'} on it (its state folder's lock): "
            f"stop {'it' if len(named) == 1 else 'them'} first"
        )
    found = strangers(data_dir)
    if found:
        more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
        raise Refused(
            f"it holds what talkstream did not put there ({', '.join(found[:SHOWN])}{more}): "
            "remove it yourself, or point TALKSTREAM_DATA_DIR at talkstream's own folder"
        )


def stop_broker(data_dir: Path) -> bool:
    """Stop the embedded broker (or local cluster) running from ``data_dir``; whether one ran."""
    cluster = KafkaCluster.from_manifest(data_dir)
    return (cluster or EmbeddedKafka(data_dir)).stop()


def clean(data_dir: Path, *, named: str, here: Path, home: Path) -> str:
    """Remove ``data_dir``; what was done, one line (``named``: what set it)."""
    where = f"{data_dir} ({named})"
    if not data_dir.exists():
        return f"nothing to remove: {where} does not exist"
    try:
        check(data_dir, here=here, home=home)
    except Refused as exc:
        raise Refused(f"not removing {where}: {exc}") from None
    stopped = stop_broker(data_dir)
    entries = sorted(entry.name for entry in data_dir.iterdir())
    shutil.rmtree(data_dir)
    what = f": {', '.join(entries)}" if entries else " (it was empty)"
    broker = "; stopped the embedded broker running from it" if stopped else ""
    return f"removed {where}{what}{broker}"


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"make clean: {describe_invalid(exc)}", file=sys.stderr)
        return 1
    named = (
        "TALKSTREAM_DATA_DIR"
        if "data_dir" in settings.model_fields_set
        else "the default: TALKSTREAM_DATA_DIR is not set"
    )
    try:
        said = clean(
            settings.data_dir, named=named, here=Path.cwd().resolve(), home=Path.home().resolve()
        )
    except (Refused, KafkaLauncherError, OSError) as exc:
        print(f"make clean: {exc}", file=sys.stderr)
        return 1
    print(f"make clean: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
