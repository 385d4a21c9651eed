"""The write primitives every transaction on a run is built from.

Each function works inside the caller's transaction (`conn`). Writers serialise on the
run row: `lock_run` first, then read and append, so event ids stay dense and a check
followed by a write cannot race.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, select, update

from app.engine import events as ev
from app.engine.statuses import OPEN_STATUSES, TERMINAL_STATUSES, ExecutionStatus, sources_of
from app.errors import IllegalTransition
from app.storage.schema import activities, events, executions, runs


@dataclass(frozen=True)
class NewEvent:
    event_type: str
    attributes: dict[str, Any]
    # Names the fact recorded, so a redelivered message cannot record it twice.
    dedup_key: str | None = None


@dataclass(frozen=True)
class LockedRun:
    run_id: uuid.UUID
    execution_id: str
    workflow_name: str
    status: ExecutionStatus
    deadline: datetime
    random_seed: int
    last_event_id: int
    processed_event_id: int
    workflow_task_due_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


def lock_run(conn: Connection, run_id: uuid.UUID) -> LockedRun | None:
    row = (
        conn.execute(
            select(
                runs.c.run_id,
                runs.c.execution_id,
                executions.c.workflow_name,
                runs.c.status,
                runs.c.deadline,
                runs.c.random_seed,
                runs.c.last_event_id,
                runs.c.processed_event_id,
                runs.c.workflow_task_due_at,
            )
            .join(executions, executions.c.execution_id == runs.c.execution_id)
            .where(runs.c.run_id == run_id)
            .with_for_update(of=runs)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return LockedRun(**{**row, "status": ExecutionStatus(row["status"])})


def already_recorded(conn: Connection, run_id: uuid.UUID, dedup_key: str) -> bool:
    query = select(exists().where(events.c.run_id == run_id, events.c.dedup_key == dedup_key))
    return bool(conn.execute(query).scalar())


def append_events(conn: Connection, run: LockedRun, new_events: list[NewEvent]) -> LockedRun:
    """Append events after the run's last one; returns the run with its new counter."""
    if not new_events:
        return run
    first_id = run.last_event_id + 1
    now_ns = time.time_ns()
    conn.execute(
        insert(events),
        [
            {
                "run_id": run.run_id,
                "event_id": first_id + offset,
                "execution_id": run.execution_id,
                "event_type": event.event_type,
                "attributes": event.attributes,
                "event_timestamp": now_ns + offset,
                "dedup_key": event.dedup_key,
            }
            for offset, event in enumerate(new_events)
        ],
    )
    last_event_id = run.last_event_id + len(new_events)
    conn.execute(
        update(runs).where(runs.c.run_id == run.run_id).values(last_event_id=last_event_id)
    )
    return _replace(run, last_event_id=last_event_id)


def transition(
    conn: Connection,
    run: LockedRun,
    new_status: ExecutionStatus,
    *,
    now: datetime,
    result: Any = None,
    error: dict[str, Any] | None = None,
    reason: str | None = None,
) -> LockedRun:
    """Move the run to `new_status` with a guarded update, and record the change.

    Entering a terminal status records nothing here: the caller appends the matching
    WORKFLOW_EXECUTION_* event in the same transaction.
    """
    values: dict[str, Any] = {"status": new_status.value}
    if new_status in TERMINAL_STATUSES:
        values.update(end_time=now, result=result, error=error, workflow_task_due_at=None)
    changed = conn.execute(
        update(runs)
        .where(
            runs.c.run_id == run.run_id,
            runs.c.status.in_([s.value for s in sources_of(new_status)]),
        )
        .values(**values)
        .returning(runs.c.run_id)
    ).first()
    if changed is None:
        raise IllegalTransition(f"run {run.run_id} cannot go from {run.status} to {new_status}")
    moved = _replace(run, status=new_status)
    if new_status in TERMINAL_STATUSES:
        return moved
    return append_events(
        conn,
        moved,
        [
            NewEvent(
                ev.WORKFLOW_STATUS_CHANGED,
                {"from_status": run.status.value, "to_status": new_status.value, "reason": reason},
            )
        ],
    )


def close_run(
    conn: Connection,
    run: LockedRun,
    new_status: ExecutionStatus,
    closing_event: NewEvent,
    *,
    now: datetime,
    result: Any = None,
    error: dict[str, Any] | None = None,
) -> LockedRun:
    """Record the closing event, then move the run to its terminal status.

    The event goes first because a closed run accepts no further writes (the trigger
    refuses them). A retrying run passes through RUNNING, as the status table demands.
    """
    if run.status not in sources_of(new_status):
        run = transition(conn, run, ExecutionStatus.RUNNING, now=now, reason="closing")
    run = append_events(conn, run, [closing_event])
    conn.execute(
        update(activities)
        .where(
            activities.c.run_id == run.run_id,
            activities.c.state.in_(["SCHEDULED", "STARTED", "BACKING_OFF"]),
        )
        .values(state="ABANDONED")
    )
    return transition(conn, run, new_status, now=now, result=result, error=error)


def has_retrying_activity(conn: Connection, run_id: uuid.UUID) -> bool:
    query = select(
        exists().where(
            and_(
                activities.c.run_id == run_id,
                activities.c.state.in_(["SCHEDULED", "STARTED", "BACKING_OFF"]),
                activities.c.attempt > 1,
            )
        )
    )
    return bool(conn.execute(query).scalar())


def request_workflow_task(conn: Connection, run_id: uuid.UUID) -> None:
    conn.execute(
        update(runs)
        .where(runs.c.run_id == run_id, runs.c.workflow_task_due_at.is_(None))
        .values(workflow_task_due_at=func.now())
    )


def _replace(run: LockedRun, **changes: Any) -> LockedRun:
    return LockedRun(**{**run.__dict__, **changes})
