"""The Talkable event number each publication transition concerns: ``transitions.event_number``,
the number a PublicationStarted or PublicationFailed attempt writes under (its
``attempted_event_number``, lifecycle schema 9) and the one a CompletionPublished landed under
(its ``event_number``, schema 8). With the request's ``site`` it joins a failed publication
with the Talkable event it attempted.

NULL on every other transition, on every transition projected before (their events are not
read again), and on one whose event was written before the schema that says it: a replay
rebuilds the same from the log. Added in place, nullable and without a default, on SQLite and
PostgreSQL alike: neither copies the table nor rewrites its rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("transitions", sa.Column("event_number", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("transitions", "event_number")  # SQLite 3.35 on drops it in place
