"""The workflow task: replay a run and record what its code asks for next.

One transaction: lock the run (the per-execution lock), replay its history, append the
WORKFLOW_TASK_COMPLETED event and the new commands, update the status. The caller
dispatches the returned work after commit.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert, select, update

from app.engine import events as ev
from app.engine.dispatch import ActivityDispatch, Dispatch
from app.engine.payloads import check_payload_size
from app.engine.replay import (
    Command,
    CompleteWorkflow,
    FailWorkflow,
    HistoryEvent,
    NonDeterminism,
    Replayer,
    ScheduleActivity,
)
from app.engine.statuses import ExecutionStatus
from app.errors import PayloadTooLarge
from app.storage.history import (
    LockedRun,
    NewEvent,
    append_events,
    close_run,
    has_retrying_activity,
    lock_run,
    transition,
)
from app.storage.schema import activities, events, runs
from app.workflows.registry import Registry

log = logging.getLogger(__name__)


def run_workflow_task(engine: Engine, registry: Registry, run_id: uuid.UUID) -> list[Dispatch]:
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        if run is None or not run.is_open or run.workflow_task_due_at is None:
            return []
        now = datetime.now(UTC)
        if now >= run.deadline:
            time_out_run(conn, run, now=now)
            return []
        return _advance(conn, registry, run, now)


def _advance(conn: Connection, registry: Registry, run: LockedRun, now: datetime) -> list[Dispatch]:
    definition = registry.workflows.get(run.workflow_name)
    if definition is None:
        _fail_workflow_task(
            conn, run, "UnknownWorkflow", f"workflow {run.workflow_name!r} is not registered here"
        )
        return []
    replayer = Replayer(
        definition=definition,
        registry=registry,
        execution_id=run.execution_id,
        random_seed=run.random_seed,
        history=_load_history(conn, run.run_id),
    )
    outcome = replayer.replay(now=now)
    if isinstance(outcome, NonDeterminism):
        _fail_workflow_task(conn, run, "NonDeterminismError", outcome.message)
        return []
    commands = [_within_size_limit(c) for c in outcome.commands]

    task_event_id = run.last_event_id + 1
    task_id = ev.workflow_task_id(run.run_id, task_event_id)
    new_events = [
        NewEvent(
            ev.WORKFLOW_TASK_COMPLETED,
            {
                "task_id": task_id,
                "processed_event_id": outcome.processed_event_id,
                "task_time": outcome.task_time.isoformat(),
            },
        )
    ]
    scheduled = [c for c in commands if isinstance(c, ScheduleActivity)]
    for activity in scheduled:
        new_events.append(
            NewEvent(
                ev.ACTIVITY_TASK_SCHEDULED,
                {
                    "task_id": ev.activity_task_id(run.run_id, activity.seq),
                    "seq": activity.seq,
                    "activity_name": activity.activity_name,
                    "input": ev.payload(activity.input),
                    "start_to_close_seconds": activity.start_to_close_seconds,
                    "retry_policy": activity.retry_policy.to_json(),
                },
            )
        )
    run = append_events(conn, run, new_events)
    if scheduled:
        conn.execute(
            insert(activities),
            [
                {
                    "run_id": run.run_id,
                    "seq": c.seq,
                    "activity_name": c.activity_name,
                    "input": c.input,
                    "state": "SCHEDULED",
                    "retry_policy": c.retry_policy.to_json(),
                    "start_to_close_seconds": c.start_to_close_seconds,
                    "scheduled_at": now,
                }
                for c in scheduled
            ],
        )
    conn.execute(
        update(runs)
        .where(runs.c.run_id == run.run_id)
        .values(processed_event_id=outcome.processed_event_id, workflow_task_due_at=None)
    )
    for command in commands:
        if isinstance(command, CompleteWorkflow):
            close_run(
                conn,
                run,
                ExecutionStatus.COMPLETED,
                NewEvent(
                    ev.WORKFLOW_EXECUTION_COMPLETED,
                    {"task_id": task_id, "result": ev.payload(command.result), "attempt": 1},
                ),
                now=now,
                result=command.result,
            )
            return []
        if isinstance(command, FailWorkflow):
            failure = ev.failure(command.error_type, command.message)
            close_run(
                conn,
                run,
                ExecutionStatus.FAILED,
                NewEvent(
                    ev.WORKFLOW_EXECUTION_FAILED,
                    {"task_id": task_id, "failure": failure, "attempt": 1},
                ),
                now=now,
                error=failure,
            )
            return []
    if run.status is ExecutionStatus.RETRYING_AFTER_ERROR and not has_retrying_activity(
        conn, run.run_id
    ):
        transition(conn, run, ExecutionStatus.RUNNING, now=now, reason="retried activity settled")
    if not scheduled:
        return []
    return [
        Dispatch(
            run_id=run.run_id,
            activities=tuple(
                ActivityDispatch(run.run_id, c.seq, c.activity_name, c.start_to_close_seconds)
                for c in scheduled
            ),
        )
    ]


def _within_size_limit(command: Command) -> Command:
    """A result over the payload cap fails the workflow instead of being stored."""
    if isinstance(command, CompleteWorkflow):
        try:
            check_payload_size(command.result, "the workflow result")
        except PayloadTooLarge as exc:
            return FailWorkflow("PayloadTooLarge", exc.detail)
    return command


def time_out_run(conn: Connection, run: LockedRun, *, now: datetime) -> None:
    failure = ev.failure("TimeoutError", "the execution exceeded its execution_timeout")
    close_run(
        conn,
        run,
        ExecutionStatus.TIMED_OUT,
        NewEvent(
            ev.WORKFLOW_EXECUTION_TIMED_OUT,
            {
                "task_id": ev.workflow_task_id(run.run_id, run.last_event_id + 1),
                "timeout_type": "EXECUTION_TIMEOUT",
                "failure": failure,
            },
        ),
        now=now,
        error=failure,
    )


def _fail_workflow_task(conn: Connection, run: LockedRun, error_type: str, message: str) -> None:
    """Record the failure once and stop: the run waits for a fix (or its timeout)."""
    log.error("workflow task of run %s failed: %s", run.run_id, message)
    run = append_events(
        conn,
        run,
        [
            NewEvent(
                ev.WORKFLOW_TASK_FAILED,
                {
                    "task_id": ev.workflow_task_id(run.run_id, run.last_event_id + 1),
                    "failure": ev.failure(error_type, message),
                },
                dedup_key=f"workflow-task-failed:{run.last_event_id}",
            )
        ],
    )
    conn.execute(update(runs).where(runs.c.run_id == run.run_id).values(workflow_task_due_at=None))


def _load_history(conn: Connection, run_id: uuid.UUID) -> list[HistoryEvent]:
    rows = conn.execute(
        select(events.c.event_id, events.c.event_type, events.c.attributes)
        .where(events.c.run_id == run_id)
        .order_by(events.c.event_id)
    )
    return [HistoryEvent(r.event_id, r.event_type, r.attributes) for r in rows]
