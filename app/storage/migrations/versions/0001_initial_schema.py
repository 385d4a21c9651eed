"""Initial schema: executions, runs, events, activities, and the status-transition trigger
(app/storage/migrations/sql/0001_guard_run_update.sql).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.storage.migrate import sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("workflow_name", sa.Text(), nullable=False),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("root_execution_id", sa.Text(), nullable=False),
        sa.Column("parent_execution_id", sa.Text(), nullable=True),
        sa.Column("current_run_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("execution_id"),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("run_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("random_seed", sa.BigInteger(), nullable=False),
        sa.Column("last_event_id", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("processed_event_id", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("workflow_task_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(status IN ('RETRYING_AFTER_ERROR', 'RUNNING')) = (end_time IS NULL)",
            name="runs_end_time_iff_closed",
        ),
        sa.CheckConstraint(
            "status IN ('CANCELED', 'COMPLETED', 'CONTINUED_AS_NEW', 'FAILED', "
            "'RETRYING_AFTER_ERROR', 'RUNNING', 'TERMINATED', 'TIMED_OUT')",
            name="runs_status_valid",
        ),
        sa.CheckConstraint("processed_event_id <= last_event_id", name="runs_processed_le_last"),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.execution_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
        sa.UniqueConstraint("execution_id", "run_number", name="runs_execution_run_number_key"),
    )
    op.create_index(
        "runs_one_open_run_per_execution",
        "runs",
        ["execution_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('RETRYING_AFTER_ERROR', 'RUNNING')"),
    )
    op.create_index(
        "runs_open_by_deadline",
        "runs",
        ["deadline"],
        unique=False,
        postgresql_where=sa.text("status IN ('RETRYING_AFTER_ERROR', 'RUNNING')"),
    )
    op.create_index(
        "runs_workflow_task_due",
        "runs",
        ["workflow_task_due_at"],
        unique=False,
        postgresql_where=sa.text("workflow_task_due_at IS NOT NULL"),
    )
    op.create_table(
        "activities",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("activity_name", sa.Text(), nullable=False),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("retry_policy", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("start_to_close_seconds", sa.Float(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF', 'COMPLETED', 'FAILED', 'ABANDONED')",
            name="activities_state_valid",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "seq", name="activities_pkey"),
    )
    op.execute(sql_file("0001_guard_run_update.sql"))
    op.execute(
        "CREATE TRIGGER runs_guard_update BEFORE UPDATE ON runs"
        " FOR EACH ROW EXECUTE FUNCTION chainline_guard_run_update()"
    )
    op.create_index(
        "activities_in_flight",
        "activities",
        ["state", "lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF')"),
    )
    op.create_table(
        "events",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("attributes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("event_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "event_id", name="events_pkey"),
        sa.UniqueConstraint("run_id", "dedup_key", name="events_run_dedup_key"),
        sa.UniqueConstraint("sequence"),
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER runs_guard_update ON runs")
    op.execute("DROP FUNCTION chainline_guard_run_update()")
    op.drop_table("events")
    op.drop_index(
        "activities_in_flight",
        table_name="activities",
        postgresql_where=sa.text("state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF')"),
    )
    op.drop_table("activities")
    op.drop_index(
        "runs_workflow_task_due",
        table_name="runs",
        postgresql_where=sa.text("workflow_task_due_at IS NOT NULL"),
    )
    op.drop_index(
        "runs_open_by_deadline",
        table_name="runs",
        postgresql_where=sa.text("status IN ('RETRYING_AFTER_ERROR', 'RUNNING')"),
    )
    op.drop_index(
        "runs_one_open_run_per_execution",
        table_name="runs",
        postgresql_where=sa.text("status IN ('RETRYING_AFTER_ERROR', 'RUNNING')"),
    )
    op.drop_table("runs")
    op.drop_table("executions")
