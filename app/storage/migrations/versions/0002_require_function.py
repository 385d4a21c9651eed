"""chainline_require(ok, message): a guard that fails the statement it is part of.

A guarded write that matches no row must fail by itself, not leave the caller to
count rows: pipelined transactions queue their writes and COMMIT without reading
each result first (history.pipelined_transaction).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLSTATE CL001: app/storage/history.py turns it into IllegalTransition.
CREATE_REQUIRE = """
CREATE FUNCTION chainline_require(ok boolean, message text) RETURNS boolean AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION '%', message USING ERRCODE = 'CL001';
    END IF;
    RETURN true;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.execute(CREATE_REQUIRE)


def downgrade() -> None:
    op.execute("DROP FUNCTION chainline_require(boolean, text)")
