"""Writing a reset's new run (app/engine/resets.py decides what goes in it)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from app.storage.runs import NewActivity, NewEvent
from app.storage.transactions import Transaction


@dataclass(frozen=True)
class CopiedActivity:
    """An activity the copied history scheduled, in the state that history leaves it;
    one it never saw end runs again, as attempt `attempt` (after those it started)."""

    activity: NewActivity
    attempt: int


@dataclass(frozen=True)
class ResetRun:
    run_id: uuid.UUID
    from_run_id: uuid.UUID
    # The WORKFLOW_TASK_COMPLETED reset to: history before it is copied.
    reset_event_id: int
    reason: str
    # Appended after the copied history, from id `reset_event_id` on.
    events: list[NewEvent]
    activities: list[CopiedActivity]
    # Timers of the old run (by seq) that the copied history left pending.
    pending_timers: list[int]
    processed_event_id: int

    @property
    def last_event_id(self) -> int:
        return self.reset_event_id - 1 + len(self.events)


def start_reset_run(tx: Transaction, new: ResetRun) -> None:
    events = [
        {
            "event_id": new.reset_event_id + offset,
            "event_type": e.event_type,
            "attributes": e.attributes,
        }
        for offset, e in enumerate(new.events)
    ]
    activities: list[dict[str, Any]] = [
        {
            "seq": w.activity.seq,
            "activity_name": w.activity.activity_name,
            "input": w.activity.input,
            "state": w.activity.state.value,
            "attempt": w.attempt,
            "retry_policy": w.activity.retry_policy,
            "start_to_close_seconds": w.activity.start_to_close_seconds,
            "heartbeat_timeout_seconds": w.activity.heartbeat_timeout_seconds,
        }
        for w in new.activities
    ]
    row = tx.fetch_one(
        "start_reset_run",
        {
            "run_id": new.run_id,
            "from_run_id": new.from_run_id,
            "reset_event_id": new.reset_event_id,
            "reason": new.reason,
            "events": Jsonb(events),
            "activities": Jsonb(activities),
            "pending_timers": new.pending_timers,
            "last_event_id": new.last_event_id,
            "processed_event_id": new.processed_event_id,
        },
    )
    assert row is not None, "the old run is locked, so it exists"
