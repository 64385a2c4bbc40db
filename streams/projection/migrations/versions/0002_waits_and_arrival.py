"""Waits and arrival: how long each step waited for its upstream target, and when the webhook
arrived (``received_at_ms`` is the event time the ledger judged it at).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("arrived_at_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("generation_wait_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("publish_wait_ms", sa.Integer(), nullable=True))
    with op.batch_alter_table("transitions") as batch:
        batch.add_column(sa.Column("waited_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("arrived_at_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("transitions") as batch:
        batch.drop_column("arrived_at_ms")
        batch.drop_column("waited_ms")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("publish_wait_ms")
        batch.drop_column("generation_wait_ms")
        batch.drop_column("arrived_at_ms")
