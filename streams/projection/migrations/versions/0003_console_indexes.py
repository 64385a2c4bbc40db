"""Indexes for the operator console's queries: newest-first search pages by state, by site and
state, or over everything (keyset pagination on received_at_ms, request_id), and the overview's
per-minute counts of terminal states.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_requests_received", "requests", ["received_at_ms", "request_id"])
    op.create_index(
        "ix_requests_state_received", "requests", ["state", "received_at_ms", "request_id"]
    )
    op.create_index(
        "ix_requests_site_state_received",
        "requests",
        ["site", "state", "received_at_ms", "request_id"],
    )
    op.create_index("ix_requests_terminal_at", "requests", ["terminal_at_ms"])


def downgrade() -> None:
    op.drop_index("ix_requests_terminal_at", table_name="requests")
    op.drop_index("ix_requests_site_state_received", table_name="requests")
    op.drop_index("ix_requests_state_received", table_name="requests")
    op.drop_index("ix_requests_received", table_name="requests")
