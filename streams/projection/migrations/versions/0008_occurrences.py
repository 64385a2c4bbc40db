"""Each request of an id its own row: ``requests`` keyed by ``(request_id, occurrence)``, and
``transitions.occurrence`` saying which of them a transition belongs to.

The ledger names a request by the fingerprint of its params (the id the ingress answers), and
by it again once it has forgotten the fingerprint: the person not heard of for 30 days (the
whole entry deleted), or the fingerprint pushed out of the entry and its Bloom filter. The
projection folded such a request into the earlier one's row: its transitions that had the
earlier's identity (received, admitted, ...) were taken for re-emissions and dropped, the
others moved the earlier row to their state. Now a ``RequestReceived`` of an id whose request
ended, judged at another time, is the id's next request (``occurrence`` 1, 2, ...).

Every row projected before is occurrence 0, as it was: a projection that folded two requests
keeps them folded until it is rebuilt from the log (``talkstream replay --force``).

SQLite cannot change a primary key in place: the requests table is copied (its indexes dropped
before and made again after, the partial ones with their conditions). PostgreSQL swaps the
primary key's constraint; the added columns have a constant default, so no row is rewritten.

Downgrade: the requests after the first of each id, and their transitions, are deleted (the
version before keys a request by its id alone), and the overview's counts a minute are summed
again from the rows left.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = sa.text("terminal_at_ms IS NOT NULL")
IN_FLIGHT = sa.text("NOT terminal")

# the requests table's indexes as migrations 0001-0005 made them: (name, columns, where)
INDEXES: list[tuple[str, list[str], sa.TextClause | None]] = [
    ("ix_requests_state", ["state"], None),
    ("ix_requests_site_received", ["site", "received_at_ms"], None),
    ("ix_requests_person", ["person", "received_at_ms"], None),
    ("ix_requests_received", ["received_at_ms", "request_id"], None),
    ("ix_requests_state_received", ["state", "received_at_ms", "request_id"], None),
    ("ix_requests_site_state_received", ["site", "state", "received_at_ms", "request_id"], None),
    (
        "ix_requests_ended",
        [
            "terminal_at_ms",
            "state",
            "site",
            "prompt_tokens",
            "completion_tokens",
            "arrived_at_ms",
            "received_at_ms",
        ],
        ENDED,
    ),
    ("ix_requests_in_flight", ["site"], IN_FLIGHT),
]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _unkeyed(name: str) -> sa.Table:
    """The table as it is, without its primary key and indexes (the copy gets the key made
    here, and the indexes are made again after it)."""
    found = sa.Table(name, sa.MetaData(), autoload_with=op.get_bind())
    return sa.Table(
        name,
        sa.MetaData(),
        *(
            sa.Column(
                c.name,
                c.type,
                nullable=c.nullable,
                server_default=c.server_default.arg if c.server_default is not None else None,  # type: ignore[attr-defined]
            )
            for c in found.columns
        ),
    )


def _rekey(columns: list[str], add: sa.Column[int] | None = None, drop: str | None = None) -> None:
    """Key the requests by ``columns``, adding the column ``add`` before or dropping the
    column ``drop`` after."""
    if _sqlite():
        for name, _, _ in INDEXES:
            op.drop_index(name, table_name="requests")
        with op.batch_alter_table(
            "requests", recreate="always", copy_from=_unkeyed("requests")
        ) as batch:
            if add is not None:
                batch.add_column(add)
            batch.create_primary_key("pk_requests", columns)
            if drop is not None:
                batch.drop_column(drop)
        for name, indexed, where in INDEXES:
            op.create_index(name, "requests", indexed, sqlite_where=where)
        return
    if add is not None:
        op.add_column("requests", add)
    op.drop_constraint("requests_pkey", "requests", type_="primary")
    op.create_primary_key("requests_pkey", "requests", columns)
    if drop is not None:
        op.drop_column("requests", drop)


def upgrade() -> None:
    _rekey(
        ["request_id", "occurrence"],
        add=sa.Column("occurrence", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "transitions",
        sa.Column("occurrence", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.execute("DELETE FROM transitions WHERE occurrence > 0")
    op.execute("DELETE FROM requests WHERE occurrence > 0")
    op.execute("DELETE FROM ended_minutes")
    op.execute(
        "INSERT INTO ended_minutes (minute, site, state, requests, tokens)"
        " SELECT terminal_at_ms / 60000, site, state, count(*),"
        " sum(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
        " FROM requests WHERE terminal_at_ms IS NOT NULL"
        " GROUP BY terminal_at_ms / 60000, site, state"
    )
    op.drop_column("transitions", "occurrence")  # SQLite 3.35 on drops it in place
    _rekey(["request_id"], drop="occurrence")
