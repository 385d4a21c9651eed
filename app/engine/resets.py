"""Reset: a new run of an execution that takes over its current run's history up to a
WORKFLOW_TASK_COMPLETED event, and goes on from there on the code deployed now.

The workflow task that completed at the reset point runs again: the new run's history
is the old one's before that event, so the task that consumed it makes its commands
afresh (Temporal's reset). Signals and updates the old run received after the point
are appended again unless excluded. An open current run ends TERMINATED first; the old
run stays as it was. It is how an operator recovers a run whose workflow task keeps
failing (non-determinism, a bug) once a fix is deployed: reset to the last good point.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.engine.steps import child_outcome, close_run
from app.errors import ExecutionNotFound, InvalidResetPoint
from app.model import events as ev
from app.model.activity_states import ActivityState
from app.model.events import HistoryEvent
from app.model.payloads import storable_text
from app.model.statuses import ExecutionStatus
from app.storage.executions import read_execution_in, record_child_outcome
from app.storage.resets import CopiedActivity, ResetRun, start_reset_run
from app.storage.runs import (
    NewActivity,
    NewEvent,
    RunState,
    Step,
    current_run_id,
    lock_run_state,
)
from app.storage.transactions import Transaction, transaction

# The event a reset appends after the copied history: engine bookkeeping, which replay
# passes over.
WORKFLOW_EXECUTION_RESET = "WORKFLOW_EXECUTION_RESET"


def reset(
    engine: Engine,
    execution_id: str,
    event_id: int,
    *,
    reason: str | None = None,
    exclude_signals: bool = False,
    exclude_updates: bool = False,
) -> tuple[uuid.UUID, FollowUp]:
    """Reset the execution to its current run's WORKFLOW_TASK_COMPLETED `event_id`;
    returns the new run's id and what to send (its workflow task and the activities
    it waits on; the old run's attempts to stop)."""
    why = storable_text(reason) if reason else "reset"
    with transaction(engine) as tx:
        state = _lock_current_run(tx, execution_id)
        history = state.history or []
        points = [e.event_id for e in history if e.event_type == ev.WORKFLOW_TASK_COMPLETED]
        if event_id not in points:
            raise InvalidResetPoint(
                f"Event {event_id} of run {state.run.run_id} is not a reset point: reset to"
                f" one of its WORKFLOW_TASK_COMPLETED events {points}",
                event_id,
                points,
            )
        new_run_id = uuid.uuid4()
        stopped: tuple[str, ...] = ()
        woken: tuple[Dispatch, ...] = ()
        if state.run.is_open:
            failure = ev.failure("Terminated", f"reset to event {event_id}: {why}")
            closed = close_run(
                tx,
                Step(run=state.run),
                ExecutionStatus.TERMINATED,
                ev.WORKFLOW_EXECUTION_TERMINATED,
                {"reason": why, "failure": failure, "new_run_id": str(new_run_id)},
                error=failure,
                report_to_parent=False,
            )
            stopped, woken = closed.stopped, closed.dispatches
        new = _new_run(
            new_run_id, state.run.run_id, history, event_id, why, exclude_signals, exclude_updates
        )
        start_reset_run(tx, new)
        _deliver_children_closed_since(tx, execution_id, history, event_id)
    waiting = tuple(
        ActivityDispatch(
            new_run_id,
            copied.activity.seq,
            copied.activity.activity_name,
            copied.activity.start_to_close_seconds,
        )
        for copied in new.activities
        if copied.activity.state is ActivityState.SCHEDULED
    )
    follow_up = FollowUp(
        "reset", dispatches=(Dispatch(new_run_id, waiting), *woken), stop_task_ids=stopped
    )
    return new_run_id, follow_up


def _lock_current_run(tx: Transaction, execution_id: str) -> RunState:
    """Lock the execution's current run, with its history. The run is locked first, as
    every writer does (a workflow task then writes its execution's row), and is checked
    to be still current once locked: a reset that went first has replaced it, and then
    its successor is locked instead. So racing resets run one after the other."""
    run_id = current_run_id(tx, execution_id)
    while run_id is not None:
        state = lock_run_state(tx, run_id, with_history=True)
        now_current = current_run_id(tx, execution_id)
        if state is not None and now_current == run_id:
            return state
        run_id = now_current
    raise ExecutionNotFound(f"Execution {execution_id!r} not found")


def _deliver_children_closed_since(
    tx: Transaction, execution_id: str, history: list[HistoryEvent], event_id: int
) -> None:
    """Children the copied history started, and whose outcome it does not hold, that
    have closed since: their outcome went to the old run, so it is recorded again, in
    the new one (now the execution's current run). Those still running report when
    they close."""
    kept = [e for e in history if e.event_id < event_id]
    ended = {e.attributes["seq"] for e in kept if e.event_type in ev.CHILD_OUTCOMES}
    for start in kept:
        if start.event_type != ev.CHILD_WORKFLOW_STARTED or start.attributes["seq"] in ended:
            continue
        child_id = str(start.attributes["execution_id"])
        child = read_execution_in(tx, child_id)
        # A child that continued as new ends with the last of its successors.
        while child is not None and child.continued_as_execution_id is not None:
            child = read_execution_in(tx, child.continued_as_execution_id)
        if child is None or child.is_open:
            continue
        record_child_outcome(
            tx,
            child_outcome(
                execution_id,
                int(start.attributes["seq"]),
                child_id,
                child.run_id,
                child.workflow_name,
                child.status,
                child.result,
                child.error,
            ),
        )


def _new_run(
    run_id: uuid.UUID,
    from_run_id: uuid.UUID,
    history: list[HistoryEvent],
    event_id: int,
    reason: str,
    exclude_signals: bool,
    exclude_updates: bool,
) -> ResetRun:
    kept = [e for e in history if e.event_id < event_id]
    reapplied = {
        ev.WORKFLOW_EXECUTION_SIGNALED: not exclude_signals,
        ev.WORKFLOW_EXECUTION_UPDATE_ACCEPTED: not exclude_updates,
    }
    later = [e for e in history if e.event_id > event_id and reapplied.get(e.event_type, False)]
    marker = NewEvent(
        WORKFLOW_EXECUTION_RESET,
        {
            "reset_from_run_id": str(from_run_id),
            "reset_event_id": event_id,
            "reason": reason,
            "reapplied_event_ids": [e.event_id for e in later],
        },
    )
    completed = [e for e in kept if e.event_type == ev.WORKFLOW_TASK_COMPLETED]
    return ResetRun(
        run_id=run_id,
        from_run_id=from_run_id,
        reset_event_id=event_id,
        reason=reason,
        events=[marker, *(NewEvent(e.event_type, e.attributes) for e in later)],
        activities=_activities(kept),
        pending_timers=_pending_timers(kept),
        processed_event_id=int(completed[-1].attributes["processed_event_id"]) if completed else 0,
    )


def _activities(kept: list[HistoryEvent]) -> list[CopiedActivity]:
    """Each activity `kept` scheduled, in the state `kept` leaves it: ended as it
    recorded, abandoned if the code stopped waiting for it, else scheduled again."""
    states: dict[int, ActivityState] = {}
    attempts: dict[int, int] = {}
    scheduled: dict[int, HistoryEvent] = {}
    for event in kept:
        seq = event.attributes.get("seq")
        if seq is None:
            continue
        seq = int(seq)
        if event.event_type == ev.ACTIVITY_TASK_SCHEDULED:
            scheduled[seq] = event
        elif event.event_type == ev.ACTIVITY_TASK_COMPLETED:
            states[seq] = ActivityState.COMPLETED
        elif event.event_type == ev.ACTIVITY_TASK_FAILED:
            states[seq] = ActivityState.FAILED
        elif event.event_type == ev.ACTIVITY_TASK_CANCEL_REQUESTED:
            states.setdefault(seq, ActivityState.ABANDONED)
        if event.event_type in (ev.ACTIVITY_TASK_STARTED, ev.ACTIVITY_TASK_RETRYING):
            attempts[seq] = max(attempts.get(seq, 0), int(event.attributes.get("attempt", 1)))
    copied = []
    for seq, event in scheduled.items():
        a = event.attributes
        copied.append(
            CopiedActivity(
                NewActivity(
                    seq=seq,
                    activity_name=str(a["activity_name"]),
                    input=a["input"]["value"],
                    state=states.get(seq, ActivityState.SCHEDULED),
                    retry_policy=a["retry_policy"],
                    start_to_close_seconds=float(a["start_to_close_seconds"]),
                    heartbeat_timeout_seconds=a.get("heartbeat_timeout_seconds"),
                ),
                # Attempt numbers the copied history used stay used: their events'
                # dedup keys are copied with them.
                attempt=attempts.get(seq, 0) + 1,
            )
        )
    return copied


def _pending_timers(kept: list[HistoryEvent]) -> list[int]:
    started = [int(e.attributes["seq"]) for e in kept if e.event_type == ev.TIMER_STARTED]
    ended = {
        int(e.attributes["seq"])
        for e in kept
        if e.event_type in (ev.TIMER_FIRED, ev.TIMER_CANCELED)
    }
    return [seq for seq in started if seq not in ended]
