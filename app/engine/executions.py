"""Starting executions and reading them back: what the API calls."""

from __future__ import annotations

import random
import uuid
from typing import Any

from sqlalchemy import Engine

from app.engine.dispatch import Dispatch
from app.model import events as ev
from app.model.search_keys import extract
from app.model.statuses import ExecutionStatus
from app.storage.executions import (
    ExecutionRecord,
    NewExecution,
    StoredEvent,
    read_events,
    read_execution,
)
from app.storage.executions import insert_execution as insert_execution_rows
from app.workflows.registry import WorkflowDefinition


def new_execution_id() -> str:
    return uuid.uuid4().hex


def new_execution(
    definition: WorkflowDefinition,
    *,
    execution_id: str,
    input_value: Any,
    user_id: str | None = None,
    schedule_id: str | None = None,
    root_execution_id: str | None = None,
    parent_execution_id: str | None = None,
    continued_from_execution_id: str | None = None,
    continued_from_run_id: uuid.UUID | None = None,
    first_execution_run_id: uuid.UUID | None = None,
    parent_seq: int | None = None,
    parent_close_policy: str | None = None,
    execution_timeout_seconds: float | None = None,
) -> NewExecution:
    """What recording a new execution of `definition` writes (`input_value` encoded);
    a child or a continuation names its place in its tree."""
    run_id = uuid.uuid4()
    return NewExecution(
        execution_id=execution_id,
        run_id=run_id,
        workflow_name=definition.name,
        input_value=input_value,
        started_attributes={
            "task_id": ev.workflow_task_id(run_id, 1),
            "workflow_name": definition.name,
            "display_name": definition.display_name or definition.name,
            "input": ev.payload(input_value),
            "attempt": 1,
        },
        execution_timeout_seconds=(
            definition.execution_timeout.total_seconds()
            if execution_timeout_seconds is None
            else execution_timeout_seconds
        ),
        random_seed=random.getrandbits(63),
        user_id=user_id,
        schedule_id=schedule_id,
        search_keys=extract(input_value, definition.search_keys) or None,
        root_execution_id=root_execution_id,
        parent_execution_id=parent_execution_id,
        continued_from_execution_id=continued_from_execution_id,
        continued_from_run_id=continued_from_run_id,
        first_execution_run_id=first_execution_run_id,
        parent_seq=parent_seq,
        parent_close_policy=parent_close_policy,
    )


def insert_execution(
    engine: Engine,
    definition: WorkflowDefinition,
    *,
    execution_id: str,
    input_value: Any,
    user_id: str | None = None,
) -> ExecutionRecord:
    """Record a new execution, its first run and WORKFLOW_EXECUTION_STARTED, in one
    transaction; the run is due for its first workflow task, which the caller sends
    (should it never be sent, the sweeper sends it). `input_value` is encoded."""
    new = new_execution(
        definition, execution_id=execution_id, input_value=input_value, user_id=user_id
    )
    start_time = insert_execution_rows(engine, new)
    return ExecutionRecord(
        execution_id=execution_id,
        workflow_name=definition.name,
        root_execution_id=execution_id,
        parent_execution_id=None,
        user_id=user_id,
        run_id=new.run_id,
        status=ExecutionStatus.RUNNING,
        start_time=start_time,
        end_time=None,
        result=None,
        error=None,
    )


def start_execution(
    engine: Engine,
    definition: WorkflowDefinition,
    *,
    execution_id: str,
    input_value: Any,
    user_id: str | None = None,
) -> tuple[ExecutionRecord, Dispatch]:
    """Record a new execution; returns it and its first workflow task, to dispatch."""
    record = insert_execution(
        engine, definition, execution_id=execution_id, input_value=input_value, user_id=user_id
    )
    return record, Dispatch(record.run_id)


def get_execution(engine: Engine, execution_id: str) -> ExecutionRecord:
    return read_execution(engine, execution_id)


def get_history(engine: Engine, run_id: uuid.UUID) -> list[StoredEvent]:
    return read_events(engine, run_id)
