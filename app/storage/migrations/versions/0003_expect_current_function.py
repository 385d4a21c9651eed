"""chainline_expect_current(ok): the guard of a write built from a run snapshot.

An activity's outcome can be recorded from the snapshot its message carries, without
reading the run first (activity_tasks.py). The guard that checks the run is still as
the snapshot saw it fails with its own SQLSTATE, so the writer can tell "read the run
and try again" from an illegal transition.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from app.storage.migrate import sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0003_expect_current.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION chainline_expect_current(boolean)")
