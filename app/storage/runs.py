"""A run's rows under its lock: reading them, and writing one step of the run.

Writers serialise on the run row: `lock_run_state` locks it and reads what a step
decides on (after the lock is granted, so nothing read is stale); `write_step` records
the step in one statement. Both go out pipelined with the transaction's other work.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb

from app.model.activity_states import ActivityState, activity_sources_of
from app.model.events import HistoryEvent
from app.model.statuses import OPEN_STATUSES, ExecutionStatus, sources_of
from app.storage.transactions import Transaction


@dataclass(frozen=True)
class LockedRun:
    run_id: uuid.UUID
    execution_id: str
    workflow_name: str
    status: ExecutionStatus
    random_seed: int
    last_event_id: int
    processed_event_id: int
    # Workflow tasks that failed in a row.
    workflow_task_attempt: int
    root_execution_id: str = ""
    user_id: str | None = None
    # A child's parent, and the parent's command that started it.
    parent_execution_id: str | None = None
    parent_seq: int | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class ActivityRow:
    seq: int
    activity_name: str
    state: ActivityState
    attempt: int
    retry_policy: dict[str, Any]
    start_to_close_seconds: float
    worker_task_id: str | None
    # Whether a running attempt's start-to-close deadline has passed.
    attempt_late: bool
    # Whether a running attempt's heartbeat deadline has passed.
    heartbeat_late: bool = False
    # What the attempt's last heartbeat reported (None: it never did).
    heartbeat_details: Any = None


@dataclass(frozen=True)
class RunState:
    """A locked run and what was read with it, all after the lock was granted."""

    run: LockedRun
    # Postgres's clock: workflow time, and every deadline, go by it.
    now: datetime
    overdue: bool
    # Until the run's workflow task may run (negative: due); None when none is due.
    workflow_task_due_in: float | None
    activity: ActivityRow | None = None
    history: list[HistoryEvent] | None = None
    # Whether an activity of the run (besides `seq`, when given) is retrying.
    retrying: bool = False
    # The stored size of the history's attributes, when the history was read.
    history_bytes: int = 0


def lock_run_state(
    tx: Transaction,
    run_id: uuid.UUID,
    *,
    seq: int | None = None,
    with_history: bool = False,
    unless_busy: bool = False,
) -> RunState | None:
    """Lock the run and read it, with activity `seq` and its history if asked, in one
    round trip; None if there is no such run (or, `unless_busy`, someone holds it)."""
    locking = tx.send("lock_run_unless_busy" if unless_busy else "lock_run", {"run_id": run_id})
    reading = tx.send(
        "read_locked_run", {"run_id": run_id, "seq": seq, "with_history": with_history}
    )
    row = tx.read_one(locking)
    read = tx.read_one(reading)
    if row is None or read is None:
        return None
    run = LockedRun(
        run_id=row[0],
        execution_id=row[1],
        workflow_name=row[2],
        status=ExecutionStatus(row[3]),
        random_seed=row[4],
        last_event_id=row[5],
        processed_event_id=row[6],
        workflow_task_attempt=row[7],
        root_execution_id=row[8],
        user_id=row[9],
        parent_execution_id=row[10],
        parent_seq=row[11],
    )
    now, overdue, due_in, others_retrying, *activity_columns, history, history_bytes = read
    activity = None
    if activity_columns[0] is not None:
        activity = _activity(activity_columns)
    return RunState(
        run=run,
        now=now,
        overdue=bool(overdue),
        workflow_task_due_in=due_in,
        activity=activity,
        history=None if history is None else [HistoryEvent(*e) for e in history],
        retrying=bool(others_retrying),
        history_bytes=int(history_bytes or 0),
    )


def _activity(columns: list[Any]) -> ActivityRow:
    seq, name, state, attempt, retry_policy, start_to_close, task_id, late, *heartbeat = columns
    heartbeat_late, heartbeat_details = heartbeat
    return ActivityRow(
        seq=seq,
        activity_name=name,
        state=ActivityState(state),
        attempt=attempt,
        retry_policy=retry_policy,
        start_to_close_seconds=start_to_close,
        worker_task_id=task_id,
        attempt_late=bool(late),
        heartbeat_late=bool(heartbeat_late),
        heartbeat_details=heartbeat_details,
    )


@dataclass(frozen=True)
class NewEvent:
    event_type: str
    attributes: dict[str, Any]
    # Names the fact recorded, so that a redelivered message cannot record it twice.
    dedup_key: str | None = None


@dataclass(frozen=True)
class NewActivity:
    seq: int
    activity_name: str
    input: Any
    state: ActivityState
    retry_policy: dict[str, Any]
    start_to_close_seconds: float
    heartbeat_timeout_seconds: float | None = None


@dataclass(frozen=True)
class NewTimer:
    seq: int
    seconds: float


@dataclass(frozen=True)
class ActivityChange:
    """One activity's transition; only from the states the transition table allows."""

    seq: int
    state: ActivityState
    # The next attempt's number, when the change starts waiting for one.
    attempt: int | None = None
    # When the next attempt may start (BACKING_OFF only).
    retry_in_seconds: float | None = None


WorkflowTaskChange = Literal["keep", "done", "due", "retry"]


@dataclass
class Step:
    """What one step of a locked run records, all in one statement (`write_step`)."""

    run: LockedRun
    events: list[NewEvent] = field(default_factory=list)
    new_activities: list[NewActivity] = field(default_factory=list)
    activity_changes: list[ActivityChange] = field(default_factory=list)
    new_timers: list[NewTimer] = field(default_factory=list)
    # Timers the code stopped waiting for: PENDING ones only (a guard).
    canceled_timers: list[int] = field(default_factory=list)
    status: ExecutionStatus | None = None
    # Closing: the run ends with `status`, its unfinished activities are abandoned.
    closing: bool = False
    result: Any = None
    error: dict[str, Any] | None = None
    processed_event_id: int | None = None
    # done: the run needs no workflow task; due: it needs one now; retry: a failed one
    # is to be tried again in `retry_in_seconds`.
    workflow_task: WorkflowTaskChange = "keep"
    retry_in_seconds: float | None = None

    @property
    def next_event_id(self) -> int:
        return self.run.last_event_id + len(self.events) + 1

    def record(
        self, event_type: str, attributes: dict[str, Any], dedup_key: str | None = None
    ) -> int:
        """Append an event; returns the id it will have."""
        event_id = self.next_event_id
        self.events.append(NewEvent(event_type, attributes, dedup_key))
        return event_id


def write_step(tx: Transaction, step: Step) -> list[str]:
    """Send the step's one statement; a guard that fails raises IllegalTransition (at
    once when the step closes the run or abandons an activity, else at COMMIT). Returns
    the task ids of the attempts it stopped (a closing step stops every running one),
    which are to be revoked."""
    run = step.run
    stops = step.closing or any(c.state is ActivityState.ABANDONED for c in step.activity_changes)
    new_status = step.status or run.status
    allowed = sources_of(new_status) if new_status is not run.status else {run.status}
    events = [
        {
            "event_id": run.last_event_id + offset,
            "event_type": event.event_type,
            "attributes": event.attributes,
            "dedup_key": event.dedup_key,
        }
        for offset, event in enumerate(step.events, start=1)
    ]
    cursor = tx.send(
        "record_step",
        {
            "run_id": run.run_id,
            "execution_id": run.execution_id,
            "events": Jsonb(events),
            "new_activities": Jsonb(
                [
                    {
                        "seq": a.seq,
                        "activity_name": a.activity_name,
                        "input": a.input,
                        "state": a.state.value,
                        "retry_policy": a.retry_policy,
                        "start_to_close_seconds": a.start_to_close_seconds,
                        "heartbeat_timeout_seconds": a.heartbeat_timeout_seconds,
                    }
                    for a in step.new_activities
                ]
            ),
            "activity_changes": Jsonb(
                [
                    {
                        "seq": c.seq,
                        "from_states": sorted(s.value for s in activity_sources_of(c.state)),
                        "state": c.state.value,
                        "attempt": c.attempt,
                        "retry_in_seconds": c.retry_in_seconds,
                    }
                    for c in step.activity_changes
                ]
            ),
            "new_timers": Jsonb([{"seq": t.seq, "seconds": t.seconds} for t in step.new_timers]),
            "canceled_timers": step.canceled_timers,
            # Whether to look for timers to cancel and attempts to stop at all: most
            # steps need neither, and skip both scans.
            "may_cancel_timers": step.closing or bool(step.canceled_timers),
            "may_stop": stops,
            "abandon_in_flight": step.closing,
            "expected_last_event_id": run.last_event_id,
            "last_event_id": run.last_event_id + len(events),
            "from_statuses": sorted(s.value for s in allowed),
            "status": new_status.value,
            "closing": step.closing,
            "result": None if step.result is None else Jsonb(step.result),
            "error": None if step.error is None else Jsonb(step.error),
            "processed_event_id": step.processed_event_id,
            "workflow_task": "done" if step.closing else step.workflow_task,
            "retry_in_seconds": step.retry_in_seconds,
            "guard_failure": f"run {run.run_id} changed, or cannot go from {run.status} to "
            f"{new_status}, or an activity cannot make its transition",
        },
    )
    if not stops:
        return []
    row = tx.read_one(cursor)
    assert row is not None
    return list(row[1])


def current_run_id(tx: Transaction, execution_id: str) -> uuid.UUID | None:
    """The run that an execution's signals, updates, cancel and terminate go to."""
    row = tx.fetch_one("read_current_run_id", {"execution_id": execution_id})
    return None if row is None else row[0]


@dataclass(frozen=True)
class KeyedEvent:
    """A run's status, and the event recording the fact a dedup key names, if any."""

    status: ExecutionStatus
    event_type: str | None
    attributes: dict[str, Any] | None


def read_keyed_event(tx: Transaction, run_id: uuid.UUID, dedup_key: str) -> KeyedEvent | None:
    row = tx.fetch_one("read_keyed_event", {"run_id": run_id, "dedup_key": dedup_key})
    if row is None:
        return None
    return KeyedEvent(ExecutionStatus(row[0]), row[1], row[2])


def read_random_seed(tx: Transaction, run_id: uuid.UUID) -> int | None:
    row = tx.fetch_one("read_random_seed", {"run_id": run_id})
    return None if row is None else int(row[0])


def record_heartbeat(
    tx: Transaction, run_id: uuid.UUID, seq: int, task_id: str, details: Any
) -> bool:
    """Move the attempt's heartbeat deadline on; False if it is no longer current."""
    params = {"run_id": run_id, "seq": seq, "task_id": task_id, "details": Jsonb(details)}
    return tx.fetch_one("record_heartbeat", params) is not None


@dataclass(frozen=True)
class RunPeek:
    open: bool
    due: bool


def peek_run(tx: Transaction, run_id: uuid.UUID) -> RunPeek | None:
    """The run's status and workflow-task flag, unlocked (None: no such run). Safe to act
    on when it says "nothing to do": whoever makes the run due sends it a task."""
    row = tx.fetch_one("peek_run", {"run_id": run_id})
    return None if row is None else RunPeek(bool(row[0]), bool(row[1]))
