"""Activity attempts: claiming one for a worker's task, and explaining a refusal."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.model.activity_states import ActivityState
from app.storage.transactions import Transaction


@dataclass(frozen=True)
class ClaimedAttempt:
    execution_id: str
    input: Any
    attempt: int
    # Until the attempt's start-to-close deadline, by Postgres's clock, as the claim
    # committed: the worker counts it down on its own monotonic clock.
    seconds_left: float


@dataclass(frozen=True)
class ClaimRefusal:
    """Why nothing was claimed, as Postgres saw it just after."""

    run_exists: bool
    run_open: bool = False
    run_overdue: bool = False
    state: ActivityState | None = None
    next_attempt_in_seconds: float | None = None


def claim_attempt(
    tx: Transaction,
    run_id: uuid.UUID,
    seq: int,
    *,
    activity_name: str,
    task_id: str,
    event_task_id: str,
) -> ClaimedAttempt | None:
    """Claim the activity's due attempt for Celery task `task_id`, recording
    ACTIVITY_TASK_STARTED, in one statement (`tx` should be autocommit)."""
    row = tx.fetch_one(
        "claim_attempt",
        {
            "run_id": run_id,
            "seq": seq,
            "activity_name": activity_name,
            "task_id": task_id,
            "event_task_id": event_task_id,
        },
    )
    if row is None:
        return None
    return ClaimedAttempt(execution_id=row[0], input=row[1], attempt=row[2], seconds_left=row[3])


def explain_claim(tx: Transaction, run_id: uuid.UUID, seq: int) -> ClaimRefusal:
    row = tx.fetch_one("explain_claim", {"run_id": run_id, "seq": seq})
    if row is None:
        return ClaimRefusal(run_exists=False)
    run_open, run_overdue, state, next_attempt_in = row
    return ClaimRefusal(
        run_exists=True,
        run_open=bool(run_open),
        run_overdue=bool(run_overdue),
        state=None if state is None else ActivityState(state),
        next_attempt_in_seconds=next_attempt_in,
    )


@dataclass(frozen=True)
class PendingActivity:
    seq: int
    activity_name: str
    start_to_close_seconds: float
    # Seconds until it may be tried (0 when it may be tried now).
    countdown: float


def pending_activities(tx: Transaction, run_id: uuid.UUID) -> list[PendingActivity]:
    """The run's activities waiting for an attempt to be claimed."""
    return [PendingActivity(*row) for row in tx.fetch_all("pending_work", {"run_id": run_id})]
