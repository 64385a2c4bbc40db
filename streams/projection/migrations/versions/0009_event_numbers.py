"""The number Talkable holds a published request's event under: ``requests.event_number``, from
its CompletionPublished (lifecycle schema 8). With ``site`` it joins the request with Talkable's
event, whose number a campaign may have given (otherwise ``generate_text_complete-<id>``).

NULL for every request projected before, and for a request not published (yet), or published
by a publisher of a version before schema 8 (its event does not say): a replay rebuilds the same
from the log. Added in place, nullable and without a default, on SQLite and PostgreSQL alike:
neither copies the table nor rewrites its rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("event_number", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("requests", "event_number")  # SQLite 3.35 on drops it in place
