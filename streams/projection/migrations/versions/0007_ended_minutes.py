"""The requests that ended in each minute, by site and state: ``ended_minutes``, what the
console's overview counts, filled from the request rows here and kept by the projector's
writes from then on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ended_minutes",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("minute", "site", "state"),
    )
    op.execute(
        "INSERT INTO ended_minutes (minute, site, state, requests, tokens)"
        " SELECT terminal_at_ms / 60000, site, state, count(*),"
        " sum(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0))"
        " FROM requests WHERE terminal_at_ms IS NOT NULL"
        " GROUP BY terminal_at_ms / 60000, site, state"
    )


def downgrade() -> None:
    op.drop_table("ended_minutes")
