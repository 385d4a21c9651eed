"""Cluster-wide metric totals (app/storage/metrics.py): the sequencer adds what each
event it numbers measures (executions started and closed, activity attempts, their
durations, retries, timer lateness) in its own transaction, so every event is counted
once whichever process numbers it; the sweeper adds its actions.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Totals count from here on: events the sequencer already passed are not measured
    # (Prometheus's rate() and increase() read a counter's changes, not its start).
    op.create_table(
        "metric_totals",
        sa.Column("metric", sa.Text(), primary_key=True),
        sa.Column("labels", JSONB(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("metric_totals")
