"""How far the live projector has read each partition of [lifecycle]: the next offset, written
with the batch it read. A partition whose records were all dead-lettered leaves no transition
behind, and without this it would be read again from its earliest offset at every start.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projected_offsets",
        sa.Column("topic", sa.String(255), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("projected_offsets")
