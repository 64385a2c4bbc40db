"""Whether a request's text was cut at the completion's cap: ``requests.truncated``, true when
its TextGenerated said so (lifecycle schema 5, OpenAI's ``finish_reason: length``); the text
was published as it was.

False for every request projected before: their events are rebuilt the same by a replay (an
event written before schema 5 does not say, and one not cut says nothing either), so the
column and a replay agree. Added in place, with a constant default, on SQLite and PostgreSQL
alike: neither copies the table (a batch operation would, on SQLite, for a default that is an
expression), nor rewrites its rows (PostgreSQL 11 on).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "requests",
        sa.Column("truncated", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("requests", "truncated")  # SQLite 3.35 on drops it in place
