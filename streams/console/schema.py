"""Whether the projection is the one this console knows how to read: its schema's revision,
read when the console starts and again at every page (one row of the version table).

- **Newer than this console** (a newer version migrated it: an upgrade the console was not
  restarted for, or a rollback that did not take the projection back): every page is a 503
  saying so and what to do, as this version's projector, ``audit`` and ``stats`` refuse it
  (``migrate.too_new_advice``). Served anyway, the pages would show a projection that this
  version's projector no longer updates (it exits at every start), standing still, and read a
  schema this version does not know.
- **Behind this console** (not migrated yet: this version's projector does it at its start):
  every page says so above its content; a page that needs what the migration adds fails
  with the projection's own "cannot be read" page.
- At this console's revision: nothing is said.

A page reads what the projection's revision has (``has``): a projection one migration behind
still shows what the migrations before gave it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from streams.projection import migrate


@dataclass(frozen=True)
class Schema:
    revision: str | None  # the projection's (None: no history this version reads)
    refused: str | None = None  # why no page is served: the projection is newer
    behind: str | None = None  # what every page says above its content


def not_made(engine: Engine) -> bool:
    """Whether the projection is a SQLite file not there yet: the worker's projector makes it
    (opening it here would make an empty file, and at a mistyped URL leave it there)."""
    database = engine.url.database
    return engine.dialect.name == "sqlite" and database is not None and not Path(database).exists()


def check(engine: Engine) -> Schema:
    """The projection's revision against this version's newest (raises what a query of an
    unusable database raises)."""
    revision = migrate.revision(engine)
    head = migrate.head()
    if revision == head:
        return Schema(revision)
    if revision is not None and revision not in migrate.revisions():
        advice = migrate.too_new_advice(engine, revision)
        return Schema(revision, refused=f"{advice}; or serve the newer version's console")
    at = f"is at migration {revision}" if revision else "has no migration history of ours"
    return Schema(
        revision,
        behind=(
            f"The projection {at}; this console reads migration {head}. This version's "
            f"projector migrates it when it starts ({migrate.migrate_command(engine)} does it "
            "alone); until then a page may be slow, or fail."
        ),
    )


def has(revision: str | None, wanted: str) -> bool:
    """Whether a projection at ``revision`` went through migration ``wanted`` (one this version
    does not know went through none it can count on)."""
    return revision is not None and wanted in _lineage(revision)


@functools.cache
def _lineage(revision: str) -> frozenset[str]:
    """``revision`` and every migration before it (nothing for a revision this version does
    not know); read once a revision."""
    if revision not in migrate.revisions():
        return frozenset()
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return frozenset(r.revision for r in script.iterate_revisions(revision, "base"))
