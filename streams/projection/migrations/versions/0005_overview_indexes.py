"""Indexes for the console's overview on a large projection: what ended in a window read from
one index alone, and the requests in flight by site without reading every request.

- ``ix_requests_ended`` replaces ``ix_requests_terminal_at``: the same leading column, and the
  state, site, tokens and both clocks beside it, so the overview's counts per minute and per
  site, tokens and latencies are read from the index, never the rows (on SQLite at 1,000,000
  requests, the last 24 hours: 770 ms → 380 ms). Partial (ended requests only): a transition
  of a request in flight does not touch it.
- ``ix_requests_in_flight``: the sites of the requests in flight (partial: they are few), which
  were counted by reading an index of every request (90-180 ms, whatever the window).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = sa.text("terminal_at_ms IS NOT NULL")
IN_FLIGHT = sa.text("NOT terminal")


def upgrade() -> None:
    op.create_index(
        "ix_requests_ended",
        "requests",
        [
            "terminal_at_ms",
            "state",
            "site",
            "prompt_tokens",
            "completion_tokens",
            "arrived_at_ms",
            "received_at_ms",
        ],
        sqlite_where=ENDED,
        postgresql_where=ENDED,
    )
    op.drop_index("ix_requests_terminal_at", table_name="requests")
    op.create_index(
        "ix_requests_in_flight",
        "requests",
        ["site"],
        sqlite_where=IN_FLIGHT,
        postgresql_where=IN_FLIGHT,
    )


def downgrade() -> None:
    op.drop_index("ix_requests_in_flight", table_name="requests")
    op.create_index("ix_requests_terminal_at", "requests", ["terminal_at_ms"])
    op.drop_index("ix_requests_ended", table_name="requests")
