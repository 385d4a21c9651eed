"""Schedules: what each schedule starts and when (its spec), fired by beat from
Postgres, and one row per tick it fired (unique on schedule and tick), so that no tick
starts twice whatever beat processes run. Executions name the schedule that started
them. A schedule with pause_on_failure pauses when one of its executions fails
(app/storage/migrations/sql/0006_schedules.sql).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from app.storage.migrate import sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _moment(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _stamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.add_column("executions", sa.Column("schedule_id", sa.Text(), nullable=True))
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.Text(), primary_key=True),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("input", JSONB(), nullable=True),
        sa.Column("spec", JSONB(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("catchup_window_seconds", sa.BigInteger(), nullable=False),
        sa.Column("pause_on_failure", sa.Boolean(), nullable=False),
        sa.Column("max_executions", sa.Integer(), nullable=True),
        sa.Column("remaining_executions", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("deployment_name", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        _moment("next_tick"),
        _moment("next_fire_at"),
        sa.Column("last_execution_id", sa.Text(), nullable=True),
        sa.Column("buffered", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("missed_ticks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _moment("last_missed_tick"),
        sa.Column("revision", sa.Integer(), server_default=sa.text("1"), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        sa.CheckConstraint("overlap BETWEEN 1 AND 6", name="schedules_overlap_valid"),
        sa.CheckConstraint("buffered >= 0", name="schedules_buffered_not_negative"),
        sa.CheckConstraint(
            "(next_tick IS NULL) = (next_fire_at IS NULL)", name="schedules_fire_iff_tick"
        ),
    )
    op.create_index(
        "schedules_due",
        "schedules",
        ["next_fire_at"],
        postgresql_where=sa.text("NOT paused AND next_fire_at IS NOT NULL"),
    )
    op.create_index(
        "schedules_with_buffered_ticks",
        "schedules",
        ["schedule_id"],
        postgresql_where=sa.text("buffered > 0 AND NOT paused"),
    )
    op.create_index("schedules_by_workflow", "schedules", ["workflow_name", "schedule_id"])
    op.create_table(
        "schedule_fires",
        sa.Column(
            "schedule_id",
            sa.Text(),
            sa.ForeignKey("schedules.schedule_id", ondelete="CASCADE"),
            nullable=False,
        ),
        _moment("tick", nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        _moment("recorded_at", nullable=False),
        sa.PrimaryKeyConstraint("schedule_id", "tick", name="schedule_fires_pkey"),
        sa.CheckConstraint("kind IN ('SCHEDULED', 'TRIGGERED')", name="schedule_fires_kind_valid"),
        sa.CheckConstraint(
            "outcome IN ('BUFFERED', 'FAILED', 'SKIPPED', 'STARTED')",
            name="schedule_fires_outcome_valid",
        ),
    )
    op.create_index(
        "schedule_fires_started",
        "schedule_fires",
        ["schedule_id", "recorded_at"],
        postgresql_where=sa.text("outcome = 'STARTED'"),
    )
    op.create_index(
        "schedule_fires_buffered",
        "schedule_fires",
        ["schedule_id", "tick"],
        postgresql_where=sa.text("outcome = 'BUFFERED'"),
    )
    op.execute(sql_file("0006_schedules.sql"))


def downgrade() -> None:
    op.execute("DROP TRIGGER runs_pause_schedule_on_failure ON runs")
    op.execute("DROP FUNCTION chainline_pause_schedule_on_failure()")
    op.drop_table("schedule_fires")
    op.drop_table("schedules")
    op.drop_column("executions", "schedule_id")
