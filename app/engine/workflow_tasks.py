"""The workflow task: replay a run and record what its code asks for next.

One transaction: lock the run (the per-execution lock), replay its history, then one
statement appends WORKFLOW_TASK_COMPLETED and the new commands and updates the run. The
caller dispatches the returned work after commit. `advance` also runs inline, in the
transaction that records an activity's outcome, so that the happy path needs no broker
hop and no extra transaction for it.

A workflow task that fails (the code disagrees with history, the workflow is not
registered on this worker, its code raises outside the entrypoint's own flow, or runs
out of time) records WORKFLOW_TASK_FAILED once and is tried again with a growing
backoff, as Temporal does: the run waits, RUNNING, for a deploy that fixes it.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import Engine

from app.engine.dispatch import ActivityDispatch, Dispatch, FollowUp
from app.engine.executions import new_execution
from app.engine.replay import (
    CLOSING_COMMANDS,
    ActivationOutcome,
    CancelActivity,
    CancelTimer,
    CancelWorkflow,
    ClosingCommand,
    Command,
    CompleteUpdate,
    CompleteWorkflow,
    ContinueAsNewWorkflow,
    FailWorkflow,
    RecordTaskEvent,
    RejectUpdate,
    Replayer,
    ScheduleActivity,
    StartChildWorkflow,
    StartTimer,
    UpsertSearchKeys,
)
from app.engine.search_keys import apply_search_keys
from app.engine.steps import Closed, close_run, settle_retrying, time_out_run
from app.engine.time_limits import Limit, WorkflowTaskTimeout
from app.model import events as ev
from app.model.activity_states import ActivityState
from app.model.events import HistoryEvent
from app.model.payloads import storable_text
from app.model.statuses import ExecutionStatus
from app.settings import Settings, get_settings
from app.storage.executions import read_chain, record_successor, send_insert_execution
from app.storage.runs import (
    ActivityChange,
    NewActivity,
    NewTimer,
    RunState,
    Step,
    lock_run_state,
    peek_run,
    write_step,
)
from app.storage.transactions import Transaction, autocommit, transaction
from app.workflows.registry import Registry

log = logging.getLogger(__name__)

# A workflow task due within this long runs now: its message's countdown, measured on a
# host's clock, may end a little before Postgres's due time.
EARLY_SLACK_SECONDS = 0.05
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAXIMUM_SECONDS = 60.0


def retry_delay(failures: int) -> float:
    """The backoff before trying a workflow task again after `failures` in a row."""
    return min(RETRY_INITIAL_SECONDS * 2.0 ** (failures - 1), RETRY_MAXIMUM_SECONDS)


def run_workflow_task(engine: Engine, registry: Registry, run_id: uuid.UUID) -> FollowUp:
    with autocommit(engine) as tx:
        peek = peek_run(tx, run_id)
    # Nothing to do, seen without taking the lock: every writer that makes a workflow
    # task due also sends one, so a message that finds none due may end here.
    if peek is None:
        return FollowUp("unknown run")
    if not peek.open:
        return FollowUp("run closed")
    if not peek.due:
        return FollowUp("nothing to do")
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id, with_history=True)
        if state is None:
            return FollowUp("unknown run")
        if not state.run.is_open:
            return FollowUp("run closed")
        due_in = state.workflow_task_due_in
        if due_in is None:
            return FollowUp("nothing to do")
        if state.overdue:
            return time_out_run(tx, state)
        if due_in > EARLY_SLACK_SECONDS:
            return FollowUp("not due yet", retry_in=due_in)
        assert state.history is not None
        return advance(tx, registry, Step(run=state.run), state)


class WorkflowTaskFailure(Exception):
    """Why a workflow task could not advance its run: recorded, then tried again."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def advance(tx: Transaction, registry: Registry, step: Step, state: RunState) -> FollowUp:
    """Replay the locked run, with what `step` has appended so far, and write the step
    with the new commands; returns what to dispatch."""
    run = step.run
    history = [*(state.history or []), *_appended(step)]
    settings = get_settings()
    over = _over_history_cap(len(history), state.history_bytes, settings)
    if over is not None:
        return _close(
            tx,
            step,
            FailWorkflow("HistoryLimitExceeded", over),
            ev.workflow_task_id(run.run_id, step.next_event_id),
            registry,
        )
    suggest = (
        len(history) >= settings.history_suggest_events
        or state.history_bytes >= settings.history_suggest_bytes
    )
    try:
        outcome = _replay(registry, state, history, suggest)
    except WorkflowTaskFailure as task_failure:
        return _fail_workflow_task(tx, step, history, task_failure)
    task_id = ev.workflow_task_id(run.run_id, step.next_event_id)
    step.record(
        ev.WORKFLOW_TASK_COMPLETED,
        {
            "task_id": task_id,
            "processed_event_id": outcome.processed_event_id,
            "task_time": outcome.task_time.isoformat(),
            **({"suggest_continue_as_new": True} if suggest else {}),
        },
    )
    step.processed_event_id = outcome.processed_event_id
    step.workflow_task = "done"
    closing = next((c for c in outcome.commands if isinstance(c, CLOSING_COMMANDS)), None)
    scheduled: list[ScheduleActivity] = []
    children: list[StartChildWorkflow] = []
    for command in outcome.commands:
        if isinstance(command, ScheduleActivity):
            _schedule(step, command, abandoned=closing is not None)
            scheduled.append(command)
        elif isinstance(command, StartChildWorkflow):
            children.append(command)
        elif isinstance(command, RecordTaskEvent):
            step.record(command.event_type, command.attributes)
        elif isinstance(command, UpsertSearchKeys):
            step.record(
                ev.SEARCH_KEYS_UPSERTED, {"values": command.values, "deleted": command.deleted}
            )
            apply_search_keys(tx, run.execution_id, command.values, command.deleted)
        elif not isinstance(command, CLOSING_COMMANDS):
            _record_command(step, command)
    started, refused = _start_children(tx, registry, step, children)
    if closing is not None:
        return _close(tx, step, closing, task_id, registry, started)
    settle_retrying(step, state.retrying, "retried activity settled")
    stopped = write_step(tx, step)
    activities = tuple(
        ActivityDispatch(run.run_id, c.seq, c.activity_name, c.start_to_close_seconds)
        for c in scheduled
    )
    # A child that could not start is an outcome already: the run needs a task for it.
    if activities or refused:
        started = (Dispatch(run.run_id, activities), *started)
    if not started:
        return FollowUp("waiting", stop_task_ids=tuple(stopped), advanced=True)
    return FollowUp("advanced", dispatches=started, stop_task_ids=tuple(stopped), advanced=True)


def _start_children(
    tx: Transaction, registry: Registry, step: Step, children: list[StartChildWorkflow]
) -> tuple[tuple[Dispatch, ...], bool]:
    """Record each child's start and insert its execution, in this transaction; returns
    their first workflow tasks, and whether one was refused. A child whose id is taken
    fails at once: its outcome is recorded for the code, and the run's workflow task is
    due."""
    run = step.run
    inserting = []
    for child in children:
        new = new_execution(
            registry.workflow(child.workflow_name),
            execution_id=child.execution_id,
            input_value=child.input,
            user_id=run.user_id,
            root_execution_id=run.root_execution_id,
            parent_execution_id=run.execution_id,
            parent_seq=child.seq,
            parent_close_policy=child.parent_close_policy,
            execution_timeout_seconds=child.execution_timeout_seconds,
        )
        step.record(
            ev.CHILD_WORKFLOW_STARTED,
            {
                "seq": child.seq,
                "workflow_name": child.workflow_name,
                "execution_id": child.execution_id,
                "run_id": str(new.run_id),
                "input": ev.payload(child.input),
                "input_digest": child.input_digest,
                "parent_close_policy": child.parent_close_policy,
                "execution_timeout_seconds": new.execution_timeout_seconds,
            },
            dedup_key=f"child:{child.seq}:started",
        )
        inserting.append((child, new, send_insert_execution(tx, new)))
    started = []
    for child, new, cursor in inserting:
        if tx.read_one(cursor) is not None:
            started.append(Dispatch(new.run_id))
            continue
        step.record(
            ev.CHILD_WORKFLOW_FAILED,
            {
                "seq": child.seq,
                "execution_id": child.execution_id,
                "workflow_name": child.workflow_name,
                "status": None,
                "failure": ev.failure(
                    "AlreadyStarted", f"an execution {child.execution_id!r} already exists"
                ),
            },
            dedup_key=f"child:{child.seq}:outcome",
        )
        step.workflow_task = "due"
    return tuple(started), len(started) < len(inserting)


def _over_history_cap(events: int, stored_bytes: int, settings: Settings) -> str | None:
    """Why the history is at its cap, or None if it is not."""
    if events >= settings.history_event_limit:
        return (
            f"the history reached {events} events, the cap is {settings.history_event_limit}:"
            " continue as new (workflow.should_continue_as_new()) before it"
        )
    if stored_bytes >= settings.history_byte_limit:
        return (
            f"the history reached {stored_bytes} bytes, the cap is"
            f" {settings.history_byte_limit}: continue as new before it"
        )
    return None


def _close(
    tx: Transaction,
    step: Step,
    closing: ClosingCommand,
    task_id: str,
    registry: Registry,
    started: tuple[Dispatch, ...] = (),
) -> FollowUp:
    """Close the run as `closing` says; `started`: the first workflow tasks of the
    children the same activation started, to send as well."""
    if isinstance(closing, ContinueAsNewWorkflow):
        successor, closed = _continue_as_new(tx, step, closing, task_id, registry)
        reason = "continued as new"
        started = (*started, successor)
    elif isinstance(closing, CompleteWorkflow):
        reason = "completed"
        closed = close_run(
            tx,
            step,
            ExecutionStatus.COMPLETED,
            ev.WORKFLOW_EXECUTION_COMPLETED,
            {"task_id": task_id, "result": ev.payload(closing.result), "attempt": 1},
            result=closing.result,
        )
    elif isinstance(closing, CancelWorkflow):
        reason = "canceled"
        failure = ev.failure("CancelledError", closing.message)
        closed = close_run(
            tx,
            step,
            ExecutionStatus.CANCELED,
            ev.WORKFLOW_EXECUTION_CANCELED,
            {"task_id": task_id, "failure": failure},
            error=failure,
        )
    else:
        reason = "failed"
        failure = ev.failure(closing.error_type, closing.message)
        closed = close_run(
            tx,
            step,
            ExecutionStatus.FAILED,
            ev.WORKFLOW_EXECUTION_FAILED,
            {"task_id": task_id, "failure": failure, "attempt": 1},
            error=failure,
        )
    return FollowUp(
        reason,
        dispatches=(*started, *closed.dispatches),
        stop_task_ids=closed.stopped,
        advanced=True,
    )


def _continue_as_new(
    tx: Transaction,
    step: Step,
    closing: ContinueAsNewWorkflow,
    task_id: str,
    registry: Registry,
) -> tuple[Dispatch, Closed]:
    """End the run CONTINUED_AS_NEW and start its successor: a new execution of the same
    workflow, in the same tree, linked both ways, all in this transaction. Returns the
    successor's first workflow task."""
    run = step.run
    definition = registry.workflow(run.workflow_name)
    chain = read_chain(tx, run.execution_id)
    successor = new_execution(
        definition,
        execution_id=uuid.uuid4().hex,
        input_value=closing.input,
        user_id=chain.user_id,
        root_execution_id=chain.root_execution_id,
        parent_execution_id=chain.parent_execution_id,
        parent_seq=chain.parent_seq,
        parent_close_policy=chain.parent_close_policy,
        continued_from_execution_id=run.execution_id,
        continued_from_run_id=run.run_id,
        first_execution_run_id=chain.first_execution_run_id,
    )
    inserted = send_insert_execution(tx, successor)
    closed = close_run(
        tx,
        step,
        ExecutionStatus.CONTINUED_AS_NEW,
        ev.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        {
            "task_id": task_id,
            "new_execution_run_id": str(successor.run_id),
            "new_execution_id": successor.execution_id,
            "workflow_name": definition.name,
            "input": ev.payload(closing.input),
        },
    )
    record_successor(tx, run.execution_id, successor.execution_id)
    assert tx.read_one(inserted) is not None, "a new random id is not taken"
    return Dispatch(successor.run_id), closed


def _record_command(step: Step, command: Command) -> None:
    """Record a command other than scheduling an activity or closing the run."""
    if isinstance(command, StartTimer):
        step.record(
            ev.TIMER_STARTED,
            {"seq": command.seq, "seconds": command.seconds, "summary": command.summary},
        )
        step.new_timers.append(NewTimer(command.seq, command.seconds))
    elif isinstance(command, CancelTimer):
        step.record(ev.TIMER_CANCELED, {"seq": command.seq})
        step.canceled_timers.append(command.seq)
    elif isinstance(command, CancelActivity):
        step.record(
            ev.ACTIVITY_TASK_CANCEL_REQUESTED,
            {
                "task_id": ev.activity_task_id(step.run.run_id, command.seq),
                "seq": command.seq,
                "activity_name": command.activity_name,
            },
        )
        step.activity_changes.append(ActivityChange(command.seq, ActivityState.ABANDONED))
    elif isinstance(command, CompleteUpdate):
        step.record(
            ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED,
            {
                "update_id": command.update_id,
                "update_name": command.update_name,
                "result": ev.payload(command.result),
            },
            dedup_key=ev.update_outcome_key(command.update_id),
        )
    elif isinstance(command, RejectUpdate):
        step.record(
            ev.WORKFLOW_EXECUTION_UPDATE_REJECTED,
            {
                "update_id": command.update_id,
                "update_name": command.update_name,
                "failure": ev.failure(command.error_type, command.message),
            },
            dedup_key=ev.update_outcome_key(command.update_id),
        )


def _appended(step: Step) -> list[HistoryEvent]:
    return [
        HistoryEvent(step.run.last_event_id + offset, event.event_type, event.attributes)
        for offset, event in enumerate(step.events, start=1)
    ]


def _replay(
    registry: Registry, state: RunState, history: list[HistoryEvent], suggest: bool
) -> ActivationOutcome:
    """Run the workflow code over `history` within the workflow task's time limit."""
    run = state.run
    definition = registry.workflows.get(run.workflow_name)
    if definition is None:
        raise WorkflowTaskFailure(
            "UnknownWorkflow", f"workflow {run.workflow_name!r} is not registered on this worker"
        )
    seconds = get_settings().workflow_task_timeout_seconds
    replayer = Replayer(
        definition=definition,
        registry=registry,
        execution_id=run.execution_id,
        random_seed=run.random_seed,
        history=history,
        run_id=run.run_id,
    )
    outcome: ActivationOutcome | None = None
    error: Exception | None = None
    limit = Limit(seconds)
    try:
        with limit.enforced(WorkflowTaskTimeout):
            try:
                outcome = replayer.replay(now=state.now, suggest_continue_as_new=suggest)
            except Exception as exc:
                error = exc
    except WorkflowTaskTimeout:
        pass
    # Expired, the limit may have surfaced as any exception, or none (code that
    # swallowed it): the time ran out all the same.
    if limit.expired:
        raise WorkflowTaskFailure(
            "WorkflowTaskTimeout", f"the workflow code ran longer than the {seconds:g}s it is given"
        )
    if error is not None:
        raise WorkflowTaskFailure(type(error).__name__, storable_text(str(error))) from error
    assert outcome is not None
    return outcome


def _schedule(step: Step, activity: ScheduleActivity, *, abandoned: bool) -> None:
    step.record(
        ev.ACTIVITY_TASK_SCHEDULED,
        {
            "task_id": ev.activity_task_id(step.run.run_id, activity.seq),
            "seq": activity.seq,
            "activity_name": activity.activity_name,
            "input": ev.payload(activity.input),
            "input_digest": activity.input_digest,
            "start_to_close_seconds": activity.start_to_close_seconds,
            "heartbeat_timeout_seconds": activity.heartbeat_timeout_seconds,
            "retry_policy": activity.retry_policy.to_json(),
        },
    )
    step.new_activities.append(
        NewActivity(
            seq=activity.seq,
            activity_name=activity.activity_name,
            input=activity.input,
            # Started but not awaited by a workflow that is ending: never run.
            state=ActivityState.ABANDONED if abandoned else ActivityState.SCHEDULED,
            retry_policy=activity.retry_policy.to_json(),
            start_to_close_seconds=activity.start_to_close_seconds,
            heartbeat_timeout_seconds=activity.heartbeat_timeout_seconds,
        )
    )


def _fail_workflow_task(
    tx: Transaction, step: Step, history: list[HistoryEvent], failure: WorkflowTaskFailure
) -> FollowUp:
    """Record the failure (once: not again while nothing else happened since) and try
    the workflow task again after a backoff."""
    run = step.run
    log.error(
        "workflow task of run %s failed: %s: %s", run.run_id, failure.error_type, failure.message
    )
    if history[-1].event_type != ev.WORKFLOW_TASK_FAILED:
        step.record(
            ev.WORKFLOW_TASK_FAILED,
            {
                "task_id": ev.workflow_task_id(run.run_id, step.next_event_id),
                "failure": ev.failure(failure.error_type, failure.message),
            },
        )
    delay = retry_delay(run.workflow_task_attempt + 1)
    step.workflow_task = "retry"
    step.retry_in_seconds = delay
    write_step(tx, step)
    return FollowUp(
        f"workflow task failed; trying again in {delay:g}s",
        dispatches=(Dispatch(run.run_id, countdown=delay),),
        # It ran: a chained workflow task has nothing to add to the retry just sent.
        advanced=True,
    )
