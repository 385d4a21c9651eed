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

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# SQLSTATE CL002: app/storage/history.py turns it into StaleSnapshot.
CREATE_EXPECT_CURRENT = """
CREATE FUNCTION chainline_expect_current(ok boolean) RETURNS boolean AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'the run changed since its snapshot' USING ERRCODE = 'CL002';
    END IF;
    RETURN true;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.execute(CREATE_EXPECT_CURRENT)


def downgrade() -> None:
    op.execute("DROP FUNCTION chainline_expect_current(boolean)")
