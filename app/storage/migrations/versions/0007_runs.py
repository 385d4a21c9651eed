"""Executions versus runs: runs listable by the filters of the runs API (each run
carries its execution's workflow and root, which never change, so that one index
answers each filter), resets (a run names the run and event it was reset from, and
why), and continue-as-new (an execution names the one it continued from and the one
that continued it), child workflows (a child names the command of its parent that
started it, and what the parent's closing does to it), and search keys (an
execution's searchable metadata, indexed).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LISTING_INDEXES = {
    "runs_by_start_time": ["start_time", "run_id"],
    "runs_by_root": ["root_execution_id", "start_time", "run_id"],
    "runs_by_status": ["status", "start_time", "run_id"],
}
# text_pattern_ops: equality, and a prefix (the listing's `search`) too.
PREFIX_INDEXES = {
    "runs_by_workflow": ["workflow_name", "start_time", "run_id"],
    "runs_by_execution_prefix": ["execution_id"],
}


def upgrade() -> None:
    op.add_column("runs", sa.Column("workflow_name", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("root_execution_id", sa.Text(), nullable=True))
    op.execute(
        "UPDATE runs r SET workflow_name = e.workflow_name,"
        " root_execution_id = e.root_execution_id"
        " FROM executions e WHERE e.execution_id = r.execution_id"
    )
    op.alter_column("runs", "workflow_name", nullable=False)
    op.alter_column("runs", "root_execution_id", nullable=False)
    op.add_column("runs", sa.Column("reset_from_run_id", UUID(as_uuid=True), nullable=True))
    op.add_column("runs", sa.Column("reset_event_id", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("reset_reason", sa.Text(), nullable=True))
    op.add_column("executions", sa.Column("continued_from_execution_id", sa.Text()))
    op.add_column("executions", sa.Column("continued_as_execution_id", sa.Text()))
    op.add_column("executions", sa.Column("continued_from_run_id", UUID(as_uuid=True)))
    op.add_column("executions", sa.Column("first_execution_run_id", UUID(as_uuid=True)))
    op.execute(
        "UPDATE executions e SET first_execution_run_id = r.run_id"
        " FROM runs r WHERE r.execution_id = e.execution_id AND r.run_number = 1"
    )
    op.alter_column("executions", "first_execution_run_id", nullable=False)
    op.add_column("executions", sa.Column("search_keys", JSONB(), nullable=True))
    op.add_column("executions", sa.Column("parent_seq", sa.Integer()))
    op.add_column("executions", sa.Column("parent_close_policy", sa.Text()))
    op.create_check_constraint(
        "executions_parent_close_policy_valid",
        "executions",
        "parent_close_policy IN ('ABANDON', 'REQUEST_CANCEL', 'TERMINATE')",
    )
    op.create_index(
        "executions_children_to_close",
        "executions",
        ["parent_execution_id"],
        postgresql_where=sa.text("parent_close_policy IN ('REQUEST_CANCEL', 'TERMINATE')"),
    )
    op.create_index(
        "executions_by_search_keys", "executions", ["search_keys"], postgresql_using="gin"
    )
    for name, columns in LISTING_INDEXES.items():
        op.create_index(name, "runs", columns)
    for name, columns in PREFIX_INDEXES.items():
        op.create_index(name, "runs", columns, postgresql_ops={columns[0]: "text_pattern_ops"})
    op.create_index(
        "runs_by_end_time",
        "runs",
        [sa.text("coalesce(end_time, 'infinity'::timestamptz)"), "run_id"],
    )


def downgrade() -> None:
    op.drop_index("runs_by_end_time", "runs")
    for name in [*LISTING_INDEXES, *PREFIX_INDEXES]:
        op.drop_index(name, "runs")
    op.drop_index("executions_by_search_keys", "executions")
    op.drop_index("executions_children_to_close", "executions")
    for column in (
        "parent_close_policy",
        "parent_seq",
        "search_keys",
        "first_execution_run_id",
        "continued_from_run_id",
        "continued_as_execution_id",
        "continued_from_execution_id",
    ):
        op.drop_column("executions", column)
    for column in (
        "reset_reason",
        "reset_event_id",
        "reset_from_run_id",
        "root_execution_id",
        "workflow_name",
    ):
        op.drop_column("runs", column)
