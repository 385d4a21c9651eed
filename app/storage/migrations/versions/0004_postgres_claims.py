"""Postgres claims: an activity's running attempt is named by its Celery task and bounded
by its deadline, activity states are guarded as run statuses are, and the sweeper's
every question has an index (app/storage/migrations/sql/0004_postgres_claims.sql).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.migrate import sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IN_FLIGHT = "state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF')"


def upgrade() -> None:
    op.execute("DROP FUNCTION chainline_expect_current(boolean)")
    op.add_column(
        "runs",
        sa.Column(
            "workflow_task_attempt", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
    )
    op.alter_column("activities", "lease_owner", new_column_name="worker_task_id")
    op.alter_column("activities", "lease_expires_at", new_column_name="attempt_deadline")
    # Leases of attempts that ended were left behind; only a running attempt has one now.
    op.execute(
        "UPDATE activities SET worker_task_id = NULL, attempt_deadline = NULL"
        " WHERE state <> 'STARTED'"
    )
    op.execute("UPDATE activities SET next_attempt_at = NULL WHERE state <> 'BACKING_OFF'")
    op.execute(
        "UPDATE activities SET worker_task_id = 'unknown', attempt_deadline = now()"
        " WHERE state = 'STARTED' AND (worker_task_id IS NULL OR attempt_deadline IS NULL)"
    )
    op.create_check_constraint(
        "activities_started_iff_running",
        "activities",
        "(state = 'STARTED') = (worker_task_id IS NOT NULL AND attempt_deadline IS NOT NULL)",
    )
    op.create_check_constraint(
        "activities_backing_off_iff_due",
        "activities",
        "(state = 'BACKING_OFF') = (next_attempt_at IS NOT NULL)",
    )
    op.drop_index(
        "activities_in_flight", table_name="activities", postgresql_where=sa.text(IN_FLIGHT)
    )
    op.create_index(
        "activities_started_by_deadline",
        "activities",
        ["attempt_deadline"],
        postgresql_where=sa.text("state = 'STARTED'"),
    )
    op.create_index(
        "activities_scheduled_since",
        "activities",
        ["scheduled_at"],
        postgresql_where=sa.text("state = 'SCHEDULED'"),
    )
    op.create_index(
        "activities_backing_off_until",
        "activities",
        ["next_attempt_at"],
        postgresql_where=sa.text("state = 'BACKING_OFF'"),
    )
    op.execute(sql_file("0004_postgres_claims.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION chainline_nanoseconds(timestamptz)")
    op.execute("DROP TRIGGER activities_guard_update ON activities")
    op.execute("DROP FUNCTION chainline_guard_activity_update()")
    op.execute(sql_file("0001_guard_run_update.sql"))
    op.drop_index("activities_backing_off_until", table_name="activities")
    op.drop_index("activities_scheduled_since", table_name="activities")
    op.drop_index("activities_started_by_deadline", table_name="activities")
    op.create_index(
        "activities_in_flight",
        "activities",
        ["state", "attempt_deadline"],
        postgresql_where=sa.text(IN_FLIGHT),
    )
    op.drop_constraint("activities_backing_off_iff_due", "activities", type_="check")
    op.drop_constraint("activities_started_iff_running", "activities", type_="check")
    op.alter_column("activities", "attempt_deadline", new_column_name="lease_expires_at")
    op.alter_column("activities", "worker_task_id", new_column_name="lease_owner")
    op.drop_column("runs", "workflow_task_attempt")
    op.execute(sql_file("0003_expect_current.sql"))
