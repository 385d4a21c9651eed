"""One activity attempt, in three steps: claim it, run it, record its outcome.

Claiming and recording are short transactions; the user's function runs between them
with no transaction open. The attempt is leased to the claiming process, so a
redelivered message can tell a live attempt (leave it) from a lost one (count it as
failed and retry by the policy).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from app.engine import events as ev
from app.engine.binding import bind_input, to_json
from app.engine.payloads import check_payload_size
from app.engine.retry import RetryPolicy
from app.engine.statuses import ExecutionStatus
from app.errors import PayloadTooLarge
from app.storage.history import (
    LockedRun,
    NewEvent,
    already_recorded,
    append_events,
    has_retrying_activity,
    lock_run,
    request_workflow_task,
    transition,
)
from app.storage.schema import activities
from app.workflows.context import current_activity_execution_id
from app.workflows.errors import WorkflowError
from app.workflows.registry import ActivityDefinition, Registry

# Time past start_to_close before a silent attempt counts as lost (the hard kill lands first).
LEASE_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class Attempt:
    """Run the activity now."""

    run_id: uuid.UUID
    execution_id: str
    seq: int
    attempt: int
    definition: ActivityDefinition
    input: Any


@dataclass(frozen=True)
class RetryLater:
    """Send the message again after `countdown` seconds."""

    countdown: float


@dataclass(frozen=True)
class Done:
    """Nothing (more) to run for this message; `reason` says why."""

    reason: str


ClaimOutcome = Attempt | RetryLater | Done


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease_owner_alive(owner: str | None) -> bool | None:
    """True or False when the owner ran on this host; None when we cannot tell."""
    if not owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_attempt(engine: Engine, registry: Registry, run_id: uuid.UUID, seq: int) -> ClaimOutcome:
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        if run is None:
            return Done("unknown run")
        row = (
            conn.execute(
                select(activities).where(activities.c.run_id == run_id, activities.c.seq == seq)
            )
            .mappings()
            .first()
        )
        if row is None:
            return Done("unknown activity")
        if not run.is_open:
            return Done("run closed")
        state = row["state"]
        if state in ("COMPLETED", "FAILED", "ABANDONED"):
            return Done(f"already {state.lower()}")
        now = datetime.now(UTC)
        if state == "BACKING_OFF" and row["next_attempt_at"] > now + timedelta(seconds=0.05):
            return RetryLater((row["next_attempt_at"] - now).total_seconds())
        if state == "STARTED":
            alive = _lease_owner_alive(row["lease_owner"])
            if alive or (alive is None and row["lease_expires_at"] > now):
                return Done("attempt in progress elsewhere")
            error_type = "WorkerLost" if alive is False else "StartToCloseTimeout"
            delay = _record_failure(
                conn,
                run,
                row,
                error_type,
                f"attempt {row['attempt']} was lost: its worker stopped before reporting",
                now,
            )
            return Done("lost attempt failed for good") if delay is None else RetryLater(delay)
        definition = registry.activities.get(row["activity_name"])
        if definition is None:
            return RetryLater(5.0)
        attempt = int(row["attempt"])
        started_key = f"activity:{seq}:attempt:{attempt}:started"
        conn.execute(
            update(activities)
            .where(activities.c.run_id == run_id, activities.c.seq == seq)
            .values(
                state="STARTED",
                lease_owner=worker_identity(),
                lease_expires_at=now
                + timedelta(seconds=row["start_to_close_seconds"])
                + LEASE_GRACE,
                next_attempt_at=None,
            )
        )
        if not already_recorded(conn, run_id, started_key):
            append_events(
                conn,
                run,
                [
                    NewEvent(
                        ev.ACTIVITY_TASK_STARTED,
                        {
                            "task_id": ev.activity_task_id(run_id, seq),
                            "activity_name": row["activity_name"],
                            "input": ev.payload(row["input"]),
                            "seq": seq,
                            "attempt": attempt,
                        },
                        dedup_key=started_key,
                    )
                ],
            )
        return Attempt(run_id, run.execution_id, seq, attempt, definition, row["input"])


def execute_attempt(attempt: Attempt) -> tuple[bool, Any]:
    """Call the user's function; (True, JSON result) or (False, the exception)."""
    token = current_activity_execution_id.set(attempt.execution_id)
    try:
        fn = attempt.definition.fn
        kwargs = bind_input(fn, attempt.input)
        if attempt.definition.is_async:
            timeout = attempt.definition.start_to_close_timeout.total_seconds()
            value = asyncio.run(asyncio.wait_for(fn(**kwargs), timeout))
        else:
            value = fn(**kwargs)
        result = to_json(value)
        check_payload_size(result, f"the result of activity {attempt.definition.name!r}")
        return True, result
    except PayloadTooLarge as exc:
        return False, WorkflowError(exc.detail, type="PayloadTooLarge", non_retryable=True)
    except Exception as exc:
        return False, exc
    finally:
        current_activity_execution_id.reset(token)


def record_outcome(
    engine: Engine, attempt: Attempt, succeeded: bool, value: Any
) -> RetryLater | Done:
    """Record the attempt's result or failure, unless the attempt is no longer ours."""
    with engine.begin() as conn:
        run = lock_run(conn, attempt.run_id)
        row = (
            conn.execute(
                select(activities).where(
                    activities.c.run_id == attempt.run_id, activities.c.seq == attempt.seq
                )
            )
            .mappings()
            .first()
        )
        if (
            run is None
            or row is None
            or not run.is_open
            or row["state"] != "STARTED"
            or row["attempt"] != attempt.attempt
            or row["lease_owner"] != worker_identity()
        ):
            return Done("outcome discarded: the attempt is no longer current")
        now = datetime.now(UTC)
        if succeeded:
            _record_success(conn, run, row, value, now)
            return Done("completed")
        error: BaseException = value
        error_type = error.type if isinstance(error, WorkflowError) else type(error).__name__
        if isinstance(error, WorkflowError) and error.non_retryable:
            delay = _record_failure(conn, run, row, error_type, str(error), now, retry=False)
        else:
            delay = _record_failure(conn, run, row, error_type, str(error), now)
        return Done("failed") if delay is None else RetryLater(delay)


def _record_success(conn: Connection, run: LockedRun, row: Any, value: Any, now: datetime) -> None:
    seq = row["seq"]
    conn.execute(
        update(activities)
        .where(activities.c.run_id == run.run_id, activities.c.seq == seq)
        .values(state="COMPLETED", lease_owner=None, lease_expires_at=None)
    )
    run = append_events(
        conn,
        run,
        [
            NewEvent(
                ev.ACTIVITY_TASK_COMPLETED,
                {
                    "task_id": ev.activity_task_id(run.run_id, seq),
                    "activity_name": row["activity_name"],
                    "result": ev.payload(value),
                    "seq": seq,
                    "attempt": row["attempt"],
                },
                dedup_key=f"activity:{seq}:outcome",
            )
        ],
    )
    request_workflow_task(conn, run.run_id)
    if run.status is ExecutionStatus.RETRYING_AFTER_ERROR and not has_retrying_activity(
        conn, run.run_id
    ):
        transition(conn, run, ExecutionStatus.RUNNING, now=now, reason="activity retry succeeded")


def _record_failure(
    conn: Connection,
    run: LockedRun,
    row: Any,
    error_type: str,
    message: str,
    now: datetime,
    *,
    retry: bool = True,
) -> float | None:
    """Record a failed attempt; returns the backoff before the next one, or None if final."""
    seq, attempt = row["seq"], row["attempt"]
    policy = RetryPolicy.from_json(row["retry_policy"])
    delay = policy.next_delay(attempt, error_type) if retry else None
    failure = ev.failure(error_type, message)
    attributes = {
        "task_id": ev.activity_task_id(run.run_id, seq),
        "activity_name": row["activity_name"],
        "attempt": attempt,
        "failure": failure,
        "seq": seq,
    }
    if delay is None:
        conn.execute(
            update(activities)
            .where(activities.c.run_id == run.run_id, activities.c.seq == seq)
            .values(state="FAILED", lease_owner=None, lease_expires_at=None)
        )
        append_events(
            conn,
            run,
            [NewEvent(ev.ACTIVITY_TASK_FAILED, attributes, dedup_key=f"activity:{seq}:outcome")],
        )
        request_workflow_task(conn, run.run_id)
        return None
    conn.execute(
        update(activities)
        .where(activities.c.run_id == run.run_id, activities.c.seq == seq)
        .values(
            state="BACKING_OFF",
            attempt=attempt + 1,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=now + timedelta(seconds=delay),
        )
    )
    run = append_events(
        conn,
        run,
        [
            NewEvent(
                ev.ACTIVITY_TASK_RETRYING,
                {**attributes, "next_attempt_in_seconds": delay},
                dedup_key=f"activity:{seq}:attempt:{attempt}:retrying",
            )
        ],
    )
    if run.status is ExecutionStatus.RUNNING:
        transition(
            conn,
            run,
            ExecutionStatus.RETRYING_AFTER_ERROR,
            now=now,
            reason=f"activity {row['activity_name']!r} attempt {attempt} failed",
        )
    return delay
