"""The projection: one row per request, one per transition (source offset unique).

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(200), primary_key=True),
        sa.Column("site", sa.String(200), nullable=False),
        sa.Column("person", sa.String(600), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("terminal", sa.Boolean(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("admitted_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("generating_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("generated_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("publishing_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("terminal_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=True),
        sa.Column("duplicate_of", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("generation_latency_ms", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_class", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("window_start", sa.BigInteger(), nullable=True),
        sa.Column("window_count", sa.Integer(), nullable=True),
    )
    op.create_index("ix_requests_state", "requests", ["state"])
    op.create_index("ix_requests_site_received", "requests", ["site", "received_at_ms"])
    op.create_index("ix_requests_person", "requests", ["person", "received_at_ms"])

    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("previous_state", sa.String(32), nullable=True),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_class", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("window_start", sa.BigInteger(), nullable=True),
        sa.Column("window_count", sa.Integer(), nullable=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_transition_source"),
    )
    op.create_index("ix_transitions_request", "transitions", ["request_id", "at_ms"])


def downgrade() -> None:
    op.drop_index("ix_transitions_request", table_name="transitions")
    op.drop_table("transitions")
    op.drop_index("ix_requests_person", table_name="requests")
    op.drop_index("ix_requests_site_received", table_name="requests")
    op.drop_index("ix_requests_state", table_name="requests")
    op.drop_table("requests")
