"""chainline_require(ok, message): a guard that fails the statement it is part of.

A guarded write that matches no row must fail by itself, not leave the caller to
count rows: pipelined transactions queue their writes and COMMIT without reading
each result first (app/storage/transactions.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from app.storage.migrate import sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql_file("0002_require.sql"))


def downgrade() -> None:
    op.execute("DROP FUNCTION chainline_require(boolean, text)")
