"""The transitions of a run, as additions to a Step (app/storage/runs.py).

Every writer (a workflow task, an activity's outcome, the sweeper, a worker reporting a
lost attempt) builds its step from these, so that a transition reads the same, and
records the same events, whoever makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from app.engine.dispatch import Dispatch, FollowUp
from app.model import events as ev
from app.model.activity_states import ActivityState
from app.model.retry import RetryPolicy
from app.model.statuses import ExecutionStatus, sources_of
from app.storage.executions import ChildOutcome, record_child_outcome
from app.storage.runs import ActivityChange, ActivityRow, RunState, Step, write_step
from app.storage.transactions import Transaction


def status_of(step: Step) -> ExecutionStatus:
    return step.status or step.run.status


def change_status(step: Step, status: ExecutionStatus, reason: str) -> None:
    """A non-terminal status change, recorded as WORKFLOW_STATUS_CHANGED."""
    step.record(
        ev.WORKFLOW_STATUS_CHANGED,
        {"from_status": status_of(step).value, "to_status": status.value, "reason": reason},
    )
    step.status = status


@dataclass(frozen=True)
class Closed:
    """What closing a run leaves to do after commit."""

    # Task ids of the attempts still running, which are to be stopped.
    stopped: tuple[str, ...]
    # A child's closing wakes its parent, whose run it recorded its outcome in.
    dispatches: tuple[Dispatch, ...] = ()


def close_run(
    tx: Transaction,
    step: Step,
    status: ExecutionStatus,
    event_type: str,
    attributes: dict[str, Any],
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    report_to_parent: bool = True,
) -> Closed:
    """Write the step, ending the run with `status` and its closing event. A child's
    outcome is recorded in its parent's run in the same transaction (but for
    CONTINUED_AS_NEW, whose successor reports instead, and when not
    `report_to_parent`: a reset ends the run, not the execution).

    A retrying run passes through RUNNING first, as the status table demands: one
    statement records that (with the rest of the step), a second the closing.
    """
    if step.run.status not in sources_of(status):
        if status_of(step) not in sources_of(status):
            change_status(step, ExecutionStatus.RUNNING, "closing")
        write_step(tx, step)
        step = Step(run=_after(step))
    step.record(event_type, attributes)
    step.status = status
    step.closing = True
    step.result = result
    step.error = error
    stopped = tuple(write_step(tx, step))
    run = step.run
    if run.parent_execution_id is None or run.parent_seq is None:
        return Closed(stopped)
    if status is ExecutionStatus.CONTINUED_AS_NEW or not report_to_parent:
        return Closed(stopped)
    parent_run_id = record_child_outcome(
        tx,
        child_outcome(
            run.parent_execution_id,
            run.parent_seq,
            run.execution_id,
            run.run_id,
            run.workflow_name,
            status,
            result,
            error,
        ),
    )
    if parent_run_id is None:
        return Closed(stopped)
    return Closed(stopped, (Dispatch(parent_run_id),))


def child_outcome(
    parent_execution_id: str,
    parent_seq: int,
    execution_id: str,
    run_id: object,
    workflow_name: str,
    status: ExecutionStatus,
    result: Any,
    error: dict[str, Any] | None,
) -> ChildOutcome:
    """The event a child's closing records in its parent's run."""
    attributes: dict[str, Any] = {
        "seq": parent_seq,
        "execution_id": execution_id,
        "run_id": str(run_id),
        "workflow_name": workflow_name,
        "status": status.value,
    }
    if status is ExecutionStatus.COMPLETED:
        event_type = ev.CHILD_WORKFLOW_COMPLETED
        attributes["result"] = ev.payload(result)
    else:
        event_type = ev.CHILD_WORKFLOW_FAILED
        attributes["failure"] = error or ev.failure(status.value, f"the child ended {status}")
    return ChildOutcome(parent_execution_id, parent_seq, execution_id, event_type, attributes)


def _after(step: Step) -> Any:
    """The run as it is once `step` is written."""
    return replace(
        step.run,
        status=status_of(step),
        last_event_id=step.run.last_event_id + len(step.events),
        processed_event_id=step.processed_event_id or step.run.processed_event_id,
    )


def time_out_run(tx: Transaction, state: RunState) -> FollowUp:
    """Close a run whose execution deadline has passed; its attempts are stopped."""
    step = Step(run=state.run)
    failure = ev.failure("TimeoutError", "the execution exceeded its execution_timeout")
    closed = close_run(
        tx,
        step,
        ExecutionStatus.TIMED_OUT,
        ev.WORKFLOW_EXECUTION_TIMED_OUT,
        {
            "task_id": ev.workflow_task_id(state.run.run_id, step.next_event_id),
            "timeout_type": "EXECUTION_TIMEOUT",
            "failure": failure,
        },
        error=failure,
    )
    return FollowUp("run timed out", dispatches=closed.dispatches, stop_task_ids=closed.stopped)


def settle_retrying(step: Step, others_retrying: bool, reason: str) -> None:
    """A run RETRYING_AFTER_ERROR is RUNNING again once none of its activities retries."""
    if status_of(step) is ExecutionStatus.RETRYING_AFTER_ERROR and not others_retrying:
        change_status(step, ExecutionStatus.RUNNING, reason)


def record_activity_success(
    step: Step, activity: ActivityRow, result: Any, *, others_retrying: bool
) -> None:
    """The current attempt succeeded: the activity is done, and the workflow task due.

    The run goes back to RUNNING unless another of its activities is still retrying.
    """
    settle_retrying(step, others_retrying, "activity retry succeeded")
    step.record(
        ev.ACTIVITY_TASK_COMPLETED,
        {
            "task_id": ev.activity_task_id(step.run.run_id, activity.seq),
            "activity_name": activity.activity_name,
            "result": ev.payload(result),
            "seq": activity.seq,
            "attempt": activity.attempt,
            **_heartbeat(activity),
        },
        dedup_key=f"activity:{activity.seq}:outcome",
    )
    step.activity_changes.append(ActivityChange(activity.seq, ActivityState.COMPLETED))
    step.workflow_task = "due"


def _heartbeat(activity: ActivityRow) -> dict[str, Any]:
    """What the attempt's last heartbeat reported, for its outcome's event."""
    if activity.heartbeat_details is None:
        return {}
    return {"last_heartbeat_details": ev.payload(activity.heartbeat_details)}


def record_activity_failure(
    step: Step, activity: ActivityRow, failure: dict[str, Any], *, retryable: bool
) -> float | None:
    """The current attempt failed: the next one is scheduled by the retry policy, or
    the activity failed for good (and the workflow task is due). Returns the backoff
    before the next attempt, None if there is none."""
    policy = RetryPolicy.from_json(activity.retry_policy)
    delay = policy.next_delay(activity.attempt, failure["type"]) if retryable else None
    attributes = {
        "task_id": ev.activity_task_id(step.run.run_id, activity.seq),
        "activity_name": activity.activity_name,
        "attempt": activity.attempt,
        "failure": failure,
        "seq": activity.seq,
        **_heartbeat(activity),
    }
    if delay is None:
        step.record(
            ev.ACTIVITY_TASK_FAILED, attributes, dedup_key=f"activity:{activity.seq}:outcome"
        )
        step.activity_changes.append(ActivityChange(activity.seq, ActivityState.FAILED))
        step.workflow_task = "due"
        return None
    if status_of(step) is ExecutionStatus.RUNNING:
        change_status(
            step,
            ExecutionStatus.RETRYING_AFTER_ERROR,
            f"activity {activity.activity_name!r} attempt {activity.attempt} failed",
        )
    step.record(
        ev.ACTIVITY_TASK_RETRYING,
        {**attributes, "next_attempt_in_seconds": delay},
        dedup_key=f"activity:{activity.seq}:attempt:{activity.attempt}:retrying",
    )
    step.activity_changes.append(
        ActivityChange(
            activity.seq,
            ActivityState.BACKING_OFF,
            attempt=activity.attempt + 1,
            retry_in_seconds=delay,
        )
    )
    return delay
