"""The event stream: each event records the transaction that wrote it (`tx_id`, its
xid8), and a sequencer numbers the streamed ones in `stream_events` in the order they
became visible (app/storage/streams.py), so that a stream resumed from a position
never skips an event that committed late, nor repeats one.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Events written before it get this migration's transaction: numbered first, in
    # their sequence order.
    op.add_column(
        "events",
        sa.Column(
            "tx_id",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id())::text::bigint"),
            nullable=False,
        ),
    )
    op.create_index("events_by_tx_id", "events", ["tx_id", "sequence"])
    op.create_table(
        "stream_events",
        sa.Column("position", sa.BigInteger(), primary_key=True),
        sa.Column("run_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "event_id"],
            ["events.run_id", "events.event_id"],
            name="stream_events_event_fkey",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("run_id", "event_id", name="stream_events_event_key"),
    )
    op.create_table(
        "stream_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("last_tx_id", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="stream_state_one_row"),
    )
    op.execute(
        "INSERT INTO stream_state (id, last_tx_id, last_sequence, last_position)"
        " VALUES (1, 0, 0, 0)"
    )


def downgrade() -> None:
    op.drop_table("stream_state")
    op.drop_table("stream_events")
    op.drop_index("events_by_tx_id", "events")
    op.drop_column("events", "tx_id")
