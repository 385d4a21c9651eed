"""Claiming an activity's attempt: one Postgres statement, the only truth of who runs it.

The statement locks the run, moves the activity from SCHEDULED (or BACKING_OFF, once
due) to STARTED with the deadline of the attempt, and records ACTIVITY_TASK_STARTED.
A second message for the same activity finds it STARTED and leaves it alone, whatever
the broker or any cache remembers: the attempt is live until its deadline, and then the
sweeper times it out (or its worker, seeing its process die, reports it lost).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from app.model import events as ev
from app.model.activity_states import FINAL_STATES, ActivityState
from app.storage.attempts import ClaimRefusal, claim_attempt, explain_claim
from app.storage.transactions import autocommit
from app.workflows.registry import ActivityDefinition, Registry

# Between checks of a claim that lost a race it could not explain (rare).
RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Attempt:
    """An attempt this worker claimed: run it now."""

    run_id: uuid.UUID
    seq: int
    execution_id: str
    attempt: int
    definition: ActivityDefinition
    input: Any
    # The Celery task running it, as the activity row records.
    task_id: str
    # Its start-to-close deadline on this process's monotonic clock (time.monotonic()):
    # Postgres's deadline, counted down from a moment before the claim was sent, so a
    # little early rather than late, whatever this host's wall clock says.
    deadline: float

    @property
    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True)
class NotClaimed:
    """Nothing to run for this message; `retry_in`: deliver it again after that long."""

    reason: str
    retry_in: float | None = None


def claim(
    engine: Engine,
    registry: Registry,
    run_id: uuid.UUID,
    seq: int,
    *,
    activity_name: str,
    task_id: str,
) -> Attempt | NotClaimed:
    definition = registry.activities.get(activity_name)
    if definition is None:
        return NotClaimed(f"activity {activity_name!r} is not registered on this worker")
    sent_at = time.monotonic()
    with autocommit(engine) as tx:
        claimed = claim_attempt(
            tx,
            run_id,
            seq,
            activity_name=activity_name,
            task_id=task_id,
            event_task_id=ev.activity_task_id(run_id, seq),
        )
        if claimed is None:
            return _refused(explain_claim(tx, run_id, seq))
    return Attempt(
        run_id=run_id,
        seq=seq,
        execution_id=claimed.execution_id,
        attempt=claimed.attempt,
        definition=definition,
        input=claimed.input,
        task_id=task_id,
        deadline=sent_at + claimed.seconds_left,
    )


def _refused(refusal: ClaimRefusal) -> NotClaimed:
    if not refusal.run_exists:
        return NotClaimed("unknown run")
    if not refusal.run_open:
        return NotClaimed("run closed")
    if refusal.run_overdue:
        return NotClaimed("run past its deadline")  # the sweeper times it out
    state = refusal.state
    if state is None:
        return NotClaimed("unknown activity")
    if state in FINAL_STATES:
        return NotClaimed(f"already {state.value.lower()}")
    if state is ActivityState.STARTED:
        return NotClaimed("attempt in progress elsewhere")
    if state is ActivityState.BACKING_OFF and (refusal.next_attempt_in_seconds or 0) > 0:
        return NotClaimed("next attempt not due yet", retry_in=refusal.next_attempt_in_seconds)
    # Claimable now, so it changed between the two statements: look again shortly.
    return NotClaimed("claim raced", retry_in=RECHECK_SECONDS)
