"""What the sweeper asks of Postgres: work past its deadline, and work gone quiet.

Each question is a bounded batch, ordered oldest first, served by an index of its own
(app/storage/schema.py), so a sweep costs the same at any table size; rows someone
holds are skipped, not waited for.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.storage.transactions import Transaction


def overdue_runs(tx: Transaction, *, limit: int) -> list[uuid.UUID]:
    return [row[0] for row in tx.fetch_all("overdue_runs", {"limit": limit})]


def late_attempts(tx: Transaction, *, limit: int) -> list[tuple[uuid.UUID, int]]:
    return [(row[0], row[1]) for row in tx.fetch_all("late_attempts", {"limit": limit})]


def late_heartbeats(tx: Transaction, *, limit: int) -> list[tuple[uuid.UUID, int]]:
    return [(row[0], row[1]) for row in tx.fetch_all("late_heartbeats", {"limit": limit})]


def rearm_stalled_workflow_tasks(
    tx: Transaction, *, stalled_seconds: float, limit: int
) -> list[uuid.UUID]:
    rows = tx.fetch_all(
        "rearm_stalled_workflow_tasks", {"stalled_seconds": stalled_seconds, "limit": limit}
    )
    return [row[0] for row in rows]


@dataclass(frozen=True)
class StalledActivity:
    run_id: uuid.UUID
    seq: int
    activity_name: str
    start_to_close_seconds: float


def rearm_stalled_activities(
    tx: Transaction, *, stalled_seconds: float, limit: int
) -> list[StalledActivity]:
    """Activities whose message was lost: never claimed though scheduled, or due to retry,
    for `stalled_seconds`."""
    params = {"stalled_seconds": stalled_seconds, "limit": limit}
    rows = [
        *tx.fetch_all("rearm_stalled_scheduled_activities", params),
        *tx.fetch_all("rearm_stalled_retries", params),
    ]
    return [StalledActivity(*row) for row in rows]
