"""Durable timers: `workflow.sleep` and `wait_condition(timeout=)` wait in Postgres, and
beat fires them (app/engine/timers.py), so a sleep outlives any worker or broker.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    op.drop_index("timers_pending_by_fire_at", table_name="timers")
    op.drop_table("timers")
