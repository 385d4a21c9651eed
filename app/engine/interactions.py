"""Talking to a live execution: signals, updates, queries, cancel and terminate.

Each write locks the execution's current run, as every writer does, so that it lands
between two workflow tasks, never inside one: a signal sent while a workflow task runs
waits for its commit, then is recorded after it and wakes the next one. Nothing is
written for a request that is refused (unknown handler, bad input, closed execution).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from app.engine.dispatch import Dispatch, FollowUp
from app.engine.replay import Replayer
from app.engine.steps import close_run
from app.errors import (
    ExecutionClosed,
    ExecutionNotFound,
    HandlerNotFound,
    InvalidPayload,
    QueryFailed,
)
from app.model import events as ev
from app.model.events import HistoryEvent
from app.model.payloads import encode
from app.model.statuses import ExecutionStatus
from app.storage.executions import ExecutionRecord, read_events, read_successor
from app.storage.runs import (
    KeyedEvent,
    RunState,
    Step,
    current_run_id,
    lock_run_state,
    read_keyed_event,
    read_random_seed,
    write_step,
)
from app.storage.transactions import Transaction, autocommit, transaction
from app.workflows.registry import HandlerDefinition, HandlerKind, Registry

TERMINATED_BY_REQUEST = "terminated by request"


def find_handler(
    registry: Registry, workflow_name: str, kind: HandlerKind, name: str
) -> HandlerDefinition:
    """The workflow's `kind` handler `name`; HandlerNotFound names those that exist."""
    definition = registry.workflow(workflow_name)
    handlers = definition.handlers(kind)
    handler = handlers.get(name)
    if handler is None:
        known = ", ".join(repr(n) for n in sorted(handlers)) or "none"
        raise HandlerNotFound(
            f"Workflow {workflow_name!r} has no {kind} handler {name!r}; its {kind}s: {known}"
        )
    return handler


def _closed_message(execution_id: str, status: ExecutionStatus, what: str) -> str:
    return f"Execution {execution_id!r} is {status.value}: it takes no {what}"


def _continued(execution_id: str, successor: str | None, what: str) -> ExecutionClosed:
    return ExecutionClosed(
        f"Execution {execution_id!r} continued as new as {successor!r}: it takes no"
        f" {what}; send them to {successor!r}"
    )


def refuse_if_continued(record: ExecutionRecord, what: str) -> None:
    """An execution that continued as new takes nothing more: 409 naming its successor
    (checked before its handlers, which the successor's code may have changed)."""
    if record.status is ExecutionStatus.CONTINUED_AS_NEW:
        raise _continued(record.execution_id, record.continued_as_execution_id, what)


def _lock_open_run(tx: Transaction, execution_id: str, what: str) -> RunState:
    run_id = current_run_id(tx, execution_id)
    state = None if run_id is None else lock_run_state(tx, run_id)
    if state is None:
        raise ExecutionNotFound(f"Execution {execution_id!r} not found")
    if state.run.status is ExecutionStatus.CONTINUED_AS_NEW:
        raise _continued(execution_id, read_successor(tx, execution_id), what)
    if not state.run.is_open:
        raise ExecutionClosed(_closed_message(execution_id, state.run.status, what))
    return state


def _record_and_wake(
    tx: Transaction,
    state: RunState,
    event_type: str,
    attributes: dict[str, Any],
    dedup_key: str | None = None,
) -> FollowUp:
    """Append an event the workflow code is to see, and make its workflow task due."""
    step = Step(run=state.run)
    step.record(event_type, attributes, dedup_key)
    step.workflow_task = "due"
    write_step(tx, step)
    return FollowUp(event_type.lower(), dispatches=(Dispatch(state.run.run_id),))


def signal(engine: Engine, execution_id: str, name: str, input_value: Any) -> FollowUp:
    """Record the signal (its input validated and encoded) and wake the workflow."""
    with transaction(engine) as tx:
        state = _lock_open_run(tx, execution_id, "signals")
        return _record_and_wake(
            tx,
            state,
            ev.WORKFLOW_EXECUTION_SIGNALED,
            {"signal_name": name, "input": ev.payload(input_value)},
        )


@dataclass(frozen=True)
class AcceptedUpdate:
    run_id: uuid.UUID
    update_id: str
    follow_up: FollowUp


def accept_update(engine: Engine, execution_id: str, name: str, input_value: Any) -> AcceptedUpdate:
    """Record the update for the workflow to handle; its outcome is recorded later, as
    WORKFLOW_EXECUTION_UPDATE_COMPLETED or _REJECTED (`update_outcome`)."""
    update_id = uuid.uuid4().hex
    with transaction(engine) as tx:
        state = _lock_open_run(tx, execution_id, "updates")
        follow_up = _record_and_wake(
            tx,
            state,
            ev.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            {"update_id": update_id, "update_name": name, "input": ev.payload(input_value)},
        )
    return AcceptedUpdate(state.run.run_id, update_id, follow_up)


def update_outcome(engine: Engine, run_id: uuid.UUID, update_id: str) -> KeyedEvent:
    """The run's status and the update's outcome event, if recorded yet."""
    with autocommit(engine) as tx:
        found = read_keyed_event(tx, run_id, ev.update_outcome_key(update_id))
    assert found is not None, "a run is never deleted while its execution exists"
    return found


def cancel(engine: Engine, execution_id: str) -> FollowUp:
    """Ask the workflow to stop: recorded once, however often asked; the code sees a
    CancelledError at its current await, and its running activities are cancelled."""
    with transaction(engine) as tx:
        return request_cancel(tx, execution_id)


def request_cancel(tx: Transaction, execution_id: str) -> FollowUp:
    """`cancel`, in the caller's transaction."""
    state = _lock_open_run(tx, execution_id, "cancel")
    requested = read_keyed_event(tx, state.run.run_id, ev.CANCEL_REQUESTED_KEY)
    if requested is not None and requested.event_type is not None:
        return FollowUp("cancel already requested")
    return _record_and_wake(
        tx,
        state,
        ev.WORKFLOW_EXECUTION_CANCEL_REQUESTED,
        {"reason": "cancel requested"},
        dedup_key=ev.CANCEL_REQUESTED_KEY,
    )


def terminate(engine: Engine, execution_id: str, reason: str = TERMINATED_BY_REQUEST) -> FollowUp:
    """End the run TERMINATED now: its running attempts are stopped, and nothing they
    return is recorded."""
    with transaction(engine) as tx:
        return terminate_in(tx, execution_id, reason)


def terminate_in(tx: Transaction, execution_id: str, reason: str) -> FollowUp:
    """`terminate`, in the caller's transaction."""
    state = _lock_open_run(tx, execution_id, "terminate")
    step = Step(run=state.run)
    failure = ev.failure("Terminated", reason)
    closed = close_run(
        tx,
        step,
        ExecutionStatus.TERMINATED,
        ev.WORKFLOW_EXECUTION_TERMINATED,
        {"reason": reason, "failure": failure},
        error=failure,
    )
    return FollowUp("terminated", dispatches=closed.dispatches, stop_task_ids=closed.stopped)


def query(
    engine: Engine, registry: Registry, record: ExecutionRecord, name: str, input_value: Any
) -> Any:
    """Answer the query from the state the recorded workflow tasks leave (open or
    closed); writes nothing. Raises QueryFailed if the handler cannot answer."""
    definition = registry.workflow(record.workflow_name)
    history = [
        HistoryEvent(e.event_id, e.event_type, e.attributes)
        for e in read_events(engine, record.run_id)
    ]
    replayer = Replayer(
        definition=definition,
        registry=registry,
        execution_id=record.execution_id,
        random_seed=_random_seed(engine, record.run_id),
        history=history,
        run_id=record.run_id,
    )
    result = replayer.query(name, input_value)
    try:
        return encode(result, f"the result of query {name!r}")
    except InvalidPayload as exc:
        raise QueryFailed(exc.detail) from None


def _random_seed(engine: Engine, run_id: uuid.UUID) -> int:
    with autocommit(engine) as tx:
        seed = read_random_seed(tx, run_id)
    if seed is None:
        raise ExecutionNotFound(f"Run {run_id} not found")
    return seed
