"""Starting executions and reading them back: what the API calls."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, select

from app.engine import events as ev
from app.engine.dispatch import Dispatch
from app.engine.replay import HistoryEvent
from app.engine.statuses import ExecutionStatus
from app.engine.workflow_tasks import advance
from app.errors import AlreadyStarted, ExecutionNotFound
from app.storage.history import LockedRun, insert_rows, pipelined_transaction, send
from app.storage.schema import events, executions, runs
from app.workflows.registry import Registry, WorkflowDefinition

EXECUTIONS_KEY = "executions_pkey"


@dataclass(frozen=True)
class ExecutionRecord:
    execution_id: str
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None
    run_id: uuid.UUID
    status: ExecutionStatus
    start_time: datetime
    end_time: datetime | None
    result: Any
    error: dict[str, Any] | None
    user_id: str | None

    @property
    def is_open(self) -> bool:
        return self.end_time is None


def new_execution_id() -> str:
    return uuid.uuid4().hex


def start_execution(
    engine: Engine,
    definition: WorkflowDefinition,
    *,
    execution_id: str,
    input_value: Any,
    user_id: str | None = None,
    registry: Registry | None = None,
) -> tuple[ExecutionRecord, list[Dispatch]]:
    """Record a new execution, its first run and its STARTED event, in one transaction.

    With a registry, the first workflow task runs in that same transaction, and the
    dispatches are its activities; without, the dispatch is a workflow task.
    """
    now = datetime.now(UTC)
    run_id = uuid.uuid4()
    deadline = now + definition.execution_timeout
    seed = random.getrandbits(63)
    started = HistoryEvent(
        1,
        ev.WORKFLOW_EXECUTION_STARTED,
        {
            "task_id": ev.workflow_task_id(run_id, 1),
            "workflow_name": definition.name,
            "display_name": definition.display_name or definition.name,
            "input": ev.payload(input_value),
            "attempt": 1,
        },
    )
    try:
        # One round trip: the inserts and the first workflow task's writes go out
        # with COMMIT, and a duplicate id comes back as the executions key's violation.
        with pipelined_transaction(engine) as conn:
            send(
                conn,
                insert_rows(
                    "executions",
                    [
                        {
                            "execution_id": execution_id,
                            "workflow_name": definition.name,
                            "input": Jsonb(input_value),
                            "root_execution_id": execution_id,
                            "current_run_id": run_id,
                            "user_id": user_id,
                        }
                    ],
                ),
            )
            send(
                conn,
                insert_rows(
                    "runs",
                    [
                        {
                            "run_id": run_id,
                            "execution_id": execution_id,
                            "run_number": 1,
                            "status": ExecutionStatus.RUNNING.value,
                            "start_time": now,
                            "deadline": deadline,
                            "random_seed": seed,
                            "last_event_id": 1,
                            "workflow_task_due_at": now,
                        }
                    ],
                ),
            )
            send(
                conn,
                insert_rows(
                    "events",
                    [
                        {
                            "run_id": run_id,
                            "event_id": 1,
                            "execution_id": execution_id,
                            "event_type": started.event_type,
                            "attributes": started.attributes,
                            "event_timestamp": int(now.timestamp() * 1e9),
                        }
                    ],
                ),
            )
            dispatches = [Dispatch(run_id=run_id)]
            if registry is not None:
                run = LockedRun(
                    run_id=run_id,
                    execution_id=execution_id,
                    workflow_name=definition.name,
                    status=ExecutionStatus.RUNNING,
                    deadline=deadline,
                    random_seed=seed,
                    last_event_id=1,
                    processed_event_id=0,
                    workflow_task_due_at=now,
                )
                dispatches = advance(conn, registry, run, now, history=[started])
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != EXECUTIONS_KEY:
            raise
        raise AlreadyStarted(f"Execution {execution_id!r} already exists") from exc
    record = ExecutionRecord(
        execution_id=execution_id,
        workflow_name=definition.name,
        root_execution_id=execution_id,
        parent_execution_id=None,
        run_id=run_id,
        status=ExecutionStatus.RUNNING,
        start_time=now,
        end_time=None,
        result=None,
        error=None,
        user_id=user_id,
    )
    if registry is not None:
        # The first workflow task may already have finished the execution.
        record = get_execution(engine, execution_id) if not dispatches else record
    return record, dispatches


def _execution_query() -> Any:
    return select(
        executions.c.execution_id,
        executions.c.workflow_name,
        executions.c.root_execution_id,
        executions.c.parent_execution_id,
        executions.c.user_id,
        runs.c.run_id,
        runs.c.status,
        runs.c.start_time,
        runs.c.end_time,
        runs.c.result,
        runs.c.error,
    ).join(runs, runs.c.run_id == executions.c.current_run_id)


def get_execution(engine: Engine, execution_id: str) -> ExecutionRecord:
    with engine.connect() as conn:
        row = (
            conn.execute(_execution_query().where(executions.c.execution_id == execution_id))
            .mappings()
            .first()
        )
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id!r} not found")
    return ExecutionRecord(**{**row, "status": ExecutionStatus(row["status"])})


@dataclass(frozen=True)
class StoredEvent:
    run_id: uuid.UUID
    event_id: int
    execution_id: str
    event_type: str
    attributes: dict[str, Any]
    event_timestamp: int
    sequence: int


def get_history(engine: Engine, run_id: uuid.UUID) -> list[StoredEvent]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                events.c.run_id,
                events.c.event_id,
                events.c.execution_id,
                events.c.event_type,
                events.c.attributes,
                events.c.event_timestamp,
                events.c.sequence,
            )
            .where(events.c.run_id == run_id)
            .order_by(events.c.event_id)
        ).mappings()
        return [StoredEvent(**row) for row in rows]
