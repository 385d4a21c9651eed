"""The event stream: numbering streamed events in the order they became visible, and
reading them back after a position.

`events.sequence` is taken when an event is inserted, not when its transaction commits,
so a reader that went past sequence 10 could later see 9 commit: resuming from 10 would
skip it. The sequencer numbers events instead in (tx_id, sequence) order, and only
those written by transactions older than every transaction still running (Postgres's
snapshot xmin): any event that becomes visible later comes from a newer transaction,
so it sorts after everything numbered. One sequencer runs at a time (an advisory lock;
the others skip), and it notifies `chainline_stream` with the last position it gave.
The same statement adds what the events it looked at measure to the metric totals
(app/storage/metrics.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.model import events as ev
from app.storage.metrics import sequencer_parameters
from app.storage.transactions import Transaction

# The advisory lock the sequencer holds while it numbers (any fixed number).
SEQUENCER_LOCK = 7_142_019
STREAMED_TYPES = sorted(ev.STREAMED)


def number_new_events(tx: Transaction, limit: int = 5000) -> int | None:
    """Number up to `limit` events that are ready; the last position given, or None if
    none was (nothing ready, or another sequencer is at it)."""
    row = tx.fetch_one(
        "number_stream_events",
        {
            "lock_key": SEQUENCER_LOCK,
            "limit": limit,
            "streamed": STREAMED_TYPES,
            **sequencer_parameters(),
        },
    )
    return None if row is None or row[0] is None else int(row[0])


@dataclass(frozen=True)
class StreamFilter:
    """What a stream or a page of the events API asks for (None: anything)."""

    execution_id: str | None = None
    root_execution_id: str | None = None
    parent_execution_id: str | None = None
    workflow_name: str | None = None
    run_id: uuid.UUID | None = None
    event_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamedEvent:
    position: int
    run_id: uuid.UUID
    event_id: int
    execution_id: str
    event_type: str
    attributes: dict[str, Any]
    event_timestamp: int
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None
    schedule_id: str | None
    continued_from_run_id: uuid.UUID | None
    first_execution_run_id: uuid.UUID | None


def read_stream(
    tx: Transaction, after: int, limit: int, where: StreamFilter = StreamFilter()
) -> list[StreamedEvent]:
    """Up to `limit` numbered events after position `after` that match `where`, in
    stream order."""
    if where.execution_id is not None and where == StreamFilter(execution_id=where.execution_id):
        rows = tx.fetch_all(
            "read_execution_stream",
            {"execution_id": where.execution_id, "after": after, "limit": limit},
        )
        return [StreamedEvent(*row) for row in rows]
    rows = tx.fetch_all(
        "read_stream",
        {
            "after": after,
            "limit": limit,
            "execution_id": where.execution_id,
            "root_execution_id": where.root_execution_id,
            "parent_execution_id": where.parent_execution_id,
            "workflow_name": where.workflow_name,
            "run_id": where.run_id,
            "event_types": list(where.event_types) or None,
        },
    )
    return [StreamedEvent(*row) for row in rows]


def last_position(tx: Transaction) -> int:
    row = tx.fetch_one("last_stream_position", {})
    assert row is not None
    return int(row[0])
