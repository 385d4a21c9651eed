"""Talking to live executions. Durable timers: `workflow.sleep` and
`wait_condition(timeout=)` wait in Postgres, and beat fires them (app/engine/timers.py),
so a sleep outlives any worker or broker. Heartbeats: an attempt of an activity with a
heartbeat timeout must report by its heartbeat deadline, and its last details are kept.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("activities", sa.Column("heartbeat_timeout_seconds", sa.Float(), nullable=True))
    op.add_column(
        "activities", sa.Column("heartbeat_deadline", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("activities", sa.Column("heartbeat_details", JSONB(), nullable=True))
    op.create_index(
        "activities_started_by_heartbeat_deadline",
        "activities",
        ["heartbeat_deadline"],
        postgresql_where=sa.text("state = 'STARTED' AND heartbeat_deadline IS NOT NULL"),
    )
    op.create_table(
        "timers",
        sa.Column(
            "run_id",
            UUID(as_uuid=True),
            sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name="timers_pkey"),
        sa.CheckConstraint("state IN ('CANCELED', 'FIRED', 'PENDING')", name="timers_state_valid"),
    )
    op.create_index(
        "timers_pending_by_fire_at",
        "timers",
        ["fire_at"],
        postgresql_where=sa.text("state = 'PENDING'"),
    )


def downgrade() -> None:
    op.drop_index("activities_started_by_heartbeat_deadline", table_name="activities")
    op.drop_column("activities", "heartbeat_details")
    op.drop_column("activities", "heartbeat_deadline")
    op.drop_column("activities", "heartbeat_timeout_seconds")
    op.drop_index("timers_pending_by_fire_at", table_name="timers")
    op.drop_table("timers")
