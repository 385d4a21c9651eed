"""The workflow task: replay a run and record what its code asks for next.

One transaction: lock the run (the per-execution lock), replay its history, then one
statement appends WORKFLOW_TASK_COMPLETED and the new commands and updates the run.
The caller dispatches the returned work after commit. `advance` also runs inline,
inside the transaction that recorded an activity's outcome or started the execution,
so the happy path needs no broker hop and no extra transaction for it.

A lone activity's dispatch carries a RunSnapshot of the run as written here. Recording
that activity's success replays from the snapshot before taking the run's lock, and
the lock's guard rejects the writes should any other writer have appended an event in
between: workflow tasks of one run still never interleave their writes.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, select

from app.engine import events as ev
from app.engine.dispatch import ActivityDispatch, ClaimTicket, Dispatch, RunSnapshot
from app.engine.payloads import check_payload_size
from app.engine.replay import (
    Command,
    CompleteWorkflow,
    FailWorkflow,
    HistoryEvent,
    NonDeterminism,
    Replayer,
    ScheduleActivity,
    replay_view,
)
from app.engine.statuses import OPEN_STATUSES, ExecutionStatus
from app.errors import PayloadTooLarge
from app.storage.history import (
    LockedRun,
    NewEvent,
    close_run,
    has_retrying_activity,
    insert_activities,
    load_history,
    lock_run,
    write_run,
)
from app.storage.schema import runs
from app.workflows.registry import Registry

log = logging.getLogger(__name__)


def run_workflow_task(engine: Engine, registry: Registry, run_id: uuid.UUID) -> list[Dispatch]:
    if not _may_need_a_workflow_task(engine, run_id):
        return []
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        if run is None or not run.is_open or run.workflow_task_due_at is None:
            return []
        now = datetime.now(UTC)
        if now >= run.deadline:
            time_out_run(conn, run)
            return []
        return advance(conn, registry, run, now)


def _may_need_a_workflow_task(engine: Engine, run_id: uuid.UUID) -> bool:
    """A lock-free look first: most redundant wake-ups (a chord's callback after the
    activities already advanced the run inline) end here without a write."""
    with engine.connect() as conn:
        row = conn.execute(
            select(runs.c.status, runs.c.workflow_task_due_at).where(runs.c.run_id == run_id)
        ).first()
    return row is not None and row.status in OPEN_STATUSES and row.workflow_task_due_at is not None


def advance(
    conn: Connection,
    registry: Registry,
    run: LockedRun,
    now: datetime,
    *,
    history: list[HistoryEvent] | None = None,
) -> list[Dispatch]:
    """Replay the locked run and record its new commands; return what to dispatch."""
    definition = registry.workflows.get(run.workflow_name)
    if definition is None:
        _fail_workflow_task(
            conn, run, "UnknownWorkflow", f"workflow {run.workflow_name!r} is not registered here"
        )
        return []
    if history is None:
        history = load_history(conn, run.run_id)
    replayer = Replayer(
        definition=definition,
        registry=registry,
        execution_id=run.execution_id,
        random_seed=run.random_seed,
        history=history,
    )
    outcome = replayer.replay(now=now)
    if isinstance(outcome, NonDeterminism):
        _fail_workflow_task(conn, run, "NonDeterminismError", outcome.message)
        return []
    commands = [_within_size_limit(c) for c in outcome.commands]
    task_id = ev.workflow_task_id(run.run_id, run.last_event_id + 1)
    recorded = [
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
    recorded += [
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
        for activity in scheduled
    ]
    closing = next((c for c in commands if not isinstance(c, ScheduleActivity)), None)
    also = []
    if scheduled:
        also.append(
            insert_activities(
                [
                    {
                        "run_id": run.run_id,
                        "seq": c.seq,
                        "activity_name": c.activity_name,
                        "input": c.input,
                        # Started but not awaited by a workflow that is ending: never run.
                        "state": "ABANDONED" if closing else "SCHEDULED",
                        "retry_policy": c.retry_policy.to_json(),
                        "start_to_close_seconds": c.start_to_close_seconds,
                        "scheduled_at": now,
                    }
                    for c in scheduled
                ]
            )
        )
    progress = {"processed_event_id": outcome.processed_event_id, "workflow_task_due_at": None}
    if isinstance(closing, CompleteWorkflow):
        close_run(
            conn,
            run,
            ExecutionStatus.COMPLETED,
            NewEvent(
                ev.WORKFLOW_EXECUTION_COMPLETED,
                {"task_id": task_id, "result": ev.payload(closing.result), "attempt": 1},
            ),
            result=closing.result,
            new_events=recorded,
            values=progress,
            also=also,
        )
        return []
    if isinstance(closing, FailWorkflow):
        failure = ev.failure(closing.error_type, closing.message)
        close_run(
            conn,
            run,
            ExecutionStatus.FAILED,
            NewEvent(
                ev.WORKFLOW_EXECUTION_FAILED, {"task_id": task_id, "failure": failure, "attempt": 1}
            ),
            error=failure,
            new_events=recorded,
            values=progress,
            also=also,
        )
        return []
    settled = run.status is ExecutionStatus.RETRYING_AFTER_ERROR and not has_retrying_activity(
        conn, run.run_id
    )
    written = write_run(
        conn,
        run,
        new_events=recorded,
        values=progress,
        also=also,
        status=ExecutionStatus.RUNNING if settled else None,
        reason="retried activity settled" if settled else None,
        history=history,
    )
    if not scheduled:
        return []
    # A chord's activities would each carry the same snapshot, and all but the first
    # to finish would find it stale: only a lone activity gets one.
    snapshot = _snapshot(written, history) if len(scheduled) == 1 else None
    return [
        Dispatch(
            run_id=run.run_id,
            activities=tuple(
                ActivityDispatch(
                    run.run_id,
                    c.seq,
                    c.activity_name,
                    c.start_to_close_seconds,
                    ClaimTicket(run.execution_id, c.input, snapshot),
                )
                for c in scheduled
            ),
        )
    ]


def _snapshot(run: LockedRun, history: list[HistoryEvent]) -> RunSnapshot | None:
    """The run as just written, if its next outcome can be recorded from it: plainly
    RUNNING, waiting for no workflow task, and with its whole history at hand."""
    if (
        run.status is not ExecutionStatus.RUNNING
        or run.workflow_task_due_at is not None
        or run.deferred is not None
        or not history
        or history[-1].event_id != run.last_event_id
    ):
        return None
    return RunSnapshot(
        workflow_name=run.workflow_name,
        deadline=run.deadline,
        random_seed=run.random_seed,
        last_event_id=run.last_event_id,
        processed_event_id=run.processed_event_id,
        history=tuple(replay_view(history)),
    )


def _within_size_limit(command: Command) -> Command:
    """A result over the payload cap fails the workflow instead of being stored."""
    if isinstance(command, CompleteWorkflow):
        try:
            check_payload_size(command.result, "the workflow result")
        except PayloadTooLarge as exc:
            return FailWorkflow("PayloadTooLarge", exc.detail)
    return command


def time_out_run(conn: Connection, run: LockedRun) -> None:
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
        error=failure,
    )


def _fail_workflow_task(conn: Connection, run: LockedRun, error_type: str, message: str) -> None:
    """Record the failure once and stop: the run waits for a fix (or its timeout)."""
    log.error("workflow task of run %s failed: %s", run.run_id, message)
    write_run(
        conn,
        run,
        new_events=[
            NewEvent(
                ev.WORKFLOW_TASK_FAILED,
                {
                    "task_id": ev.workflow_task_id(run.run_id, run.last_event_id + 1),
                    "failure": ev.failure(error_type, message),
                },
                dedup_key=f"workflow-task-failed:{run.last_event_id}",
            )
        ],
        values={"workflow_task_due_at": None},
    )
