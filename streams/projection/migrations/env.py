"""Alembic environment of the SQL projection.

The store (``streams.projection.migrate.upgrade``) hands in its own connection through
``config.attributes["connection"]``; the ``alembic`` command line gets an engine from the
configured URL, else from the settings (``TALKSTREAM_DATABASE_URL``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from streams.projection.migrate import VERSION_TABLE, one_line_log
from streams.projection.tables import Base

config = context.config
one_line_log()  # a migration's docstring, which Alembic logs as it runs it, on one line
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from streams.settings import Settings

    return Settings().resolved_database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        version_table=VERSION_TABLE,  # not alembic_version: other applications may share the DB
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        with create_engine(_url(), poolclass=pool.NullPool).connect() as connection:
            _run(connection)
