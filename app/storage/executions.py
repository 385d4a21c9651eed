"""Executions: recording a new one, and reading one back with its history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from app.errors import AlreadyStarted, ExecutionNotFound, RunNotFound
from app.model.statuses import ExecutionStatus
from app.storage.transactions import Transaction, autocommit, transaction

# Notified, with the execution id, by the transaction that closes a run (record_step).
CLOSED_CHANNEL = "chainline_execution_closed"


@dataclass(frozen=True)
class ExecutionRecord:
    execution_id: str
    workflow_name: str
    root_execution_id: str
    parent_execution_id: str | None
    user_id: str | None
    run_id: uuid.UUID
    status: ExecutionStatus
    start_time: datetime
    end_time: datetime | None
    result: Any
    error: dict[str, Any] | None
    schedule_id: str | None = None
    search_keys: dict[str, str | None] | None = None
    continued_from_execution_id: str | None = None
    continued_as_execution_id: str | None = None
    continued_from_run_id: uuid.UUID | None = None
    first_execution_run_id: uuid.UUID | None = None

    @property
    def is_open(self) -> bool:
        return self.end_time is None


@dataclass(frozen=True)
class StoredEvent:
    run_id: uuid.UUID
    event_id: int
    execution_id: str
    event_type: str
    attributes: dict[str, Any]
    event_timestamp: int
    sequence: int


@dataclass(frozen=True)
class NewExecution:
    """An execution to record: its first run and its STARTED event's attributes."""

    execution_id: str
    run_id: uuid.UUID
    workflow_name: str
    input_value: Any
    started_attributes: dict[str, Any]
    execution_timeout_seconds: float
    random_seed: int
    user_id: str | None
    schedule_id: str | None = None
    search_keys: dict[str, str | None] | None = None
    # A child's or a continuation's place in its tree (a fresh execution is its own
    # root, and the first of its chain).
    root_execution_id: str | None = None
    parent_execution_id: str | None = None
    continued_from_execution_id: str | None = None
    continued_from_run_id: uuid.UUID | None = None
    first_execution_run_id: uuid.UUID | None = None
    # A child: its parent's command that started it, and the parent's close policy.
    parent_seq: int | None = None
    parent_close_policy: str | None = None


def send_insert_execution(tx: Transaction, new: NewExecution) -> psycopg.Cursor[Any]:
    """Queue the insert of `new` in `tx`; its row is the start time, or none if the id is
    taken (and then nothing is written)."""
    return tx.send(
        "insert_execution",
        {
            "execution_id": new.execution_id,
            "run_id": new.run_id,
            "workflow_name": new.workflow_name,
            "input": Jsonb(new.input_value),
            "user_id": new.user_id,
            "schedule_id": new.schedule_id,
            "search_keys": None if new.search_keys is None else Jsonb(new.search_keys),
            "root_execution_id": new.root_execution_id,
            "parent_execution_id": new.parent_execution_id,
            "continued_from_execution_id": new.continued_from_execution_id,
            "continued_from_run_id": new.continued_from_run_id,
            "first_execution_run_id": new.first_execution_run_id,
            "parent_seq": new.parent_seq,
            "parent_close_policy": new.parent_close_policy,
            "attributes": Jsonb(new.started_attributes),
            "execution_timeout_seconds": new.execution_timeout_seconds,
            "random_seed": new.random_seed,
        },
    )


def insert_execution(engine: Engine, new: NewExecution) -> datetime:
    """Record the execution, its first run and its STARTED event; returns the start
    time. A duplicate id raises AlreadyStarted and records nothing."""
    with transaction(engine) as tx:
        row = tx.read_one(send_insert_execution(tx, new))
    if row is None:
        raise AlreadyStarted(f"Execution {new.execution_id!r} already exists")
    start_time: datetime = row[0]
    return start_time


def read_execution(engine: Engine, execution_id: str) -> ExecutionRecord:
    """The execution as its current run shows it."""
    with autocommit(engine) as tx:
        row = tx.fetch_one("read_execution", {"execution_id": execution_id})
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id!r} not found")
    return _record(row)


def read_run(engine: Engine, run_id: uuid.UUID) -> ExecutionRecord:
    """The execution as run `run_id` shows it (its status, times, result and error)."""
    with autocommit(engine) as tx:
        row = tx.fetch_one("read_run", {"run_id": run_id})
    if row is None:
        raise RunNotFound(f"Run {run_id} not found")
    return _record(row)


def _record(row: tuple[Any, ...]) -> ExecutionRecord:
    (execution_id, workflow_name, root_id, parent_id, user_id, run_id, status, *rest) = row
    start_time, end_time, result, error, schedule_id, search_keys, *links = rest
    continued_from, continued_as, continued_from_run_id, first_execution_run_id = links
    return ExecutionRecord(
        execution_id=execution_id,
        workflow_name=workflow_name,
        root_execution_id=root_id,
        parent_execution_id=parent_id,
        user_id=user_id,
        run_id=run_id,
        status=ExecutionStatus(status),
        start_time=start_time,
        end_time=end_time,
        result=result,
        error=error,
        schedule_id=schedule_id,
        search_keys=search_keys,
        continued_from_execution_id=continued_from,
        continued_as_execution_id=continued_as,
        continued_from_run_id=continued_from_run_id,
        first_execution_run_id=first_execution_run_id,
    )


def read_execution_in(tx: Transaction, execution_id: str) -> ExecutionRecord | None:
    """`read_execution`, in the caller's transaction; None if there is no such one."""
    row = tx.fetch_one("read_execution", {"execution_id": execution_id})
    return None if row is None else _record(row)


def execution_status(tx: Transaction, execution_id: str) -> ExecutionStatus | None:
    """The status of the execution's current run; None if there is no such execution."""
    row = tx.fetch_one("read_execution", {"execution_id": execution_id})
    return None if row is None else ExecutionStatus(row[6])


def read_events(engine: Engine, run_id: uuid.UUID) -> list[StoredEvent]:
    with autocommit(engine) as tx:
        return [StoredEvent(*row) for row in tx.fetch_all("read_events", {"run_id": run_id})]


@dataclass(frozen=True)
class Chain:
    """What an execution's successor (continue-as-new) takes over of its place."""

    root_execution_id: str
    parent_execution_id: str | None
    user_id: str | None
    first_execution_run_id: uuid.UUID
    # A child's successor stays its parent's child, for the same command.
    parent_seq: int | None
    parent_close_policy: str | None


def read_chain(tx: Transaction, execution_id: str) -> Chain:
    row = tx.fetch_one("read_chain", {"execution_id": execution_id})
    if row is None:
        raise ExecutionNotFound(f"Execution {execution_id!r} not found")
    return Chain(*row)


def record_successor(tx: Transaction, execution_id: str, successor_id: str) -> None:
    """Name the execution that continued `execution_id` (continue-as-new)."""
    tx.send("record_successor", {"execution_id": execution_id, "successor_id": successor_id})


def read_successor(tx: Transaction, execution_id: str) -> str | None:
    row = tx.fetch_one("read_successor", {"execution_id": execution_id})
    return None if row is None else row[0]


@dataclass(frozen=True)
class ChildOutcome:
    """A closing child's outcome, recorded in its parent's current run."""

    parent_execution_id: str
    parent_seq: int
    execution_id: str
    event_type: str
    attributes: dict[str, Any]


def record_child_outcome(tx: Transaction, outcome: ChildOutcome) -> uuid.UUID | None:
    """Record the outcome in the parent's current run if that run is open, started this
    child, and has no outcome for it yet; its workflow task becomes due. Returns the
    parent's run (to send it a workflow task), None if nothing was recorded."""
    row = tx.fetch_one(
        "record_child_outcome",
        {
            "parent_execution_id": outcome.parent_execution_id,
            "child_execution_id": outcome.execution_id,
            "started_key": f"child:{outcome.parent_seq}:started",
            "outcome_key": f"child:{outcome.parent_seq}:outcome",
            "event_type": outcome.event_type,
            "attributes": Jsonb(outcome.attributes),
        },
    )
    return None if row is None else row[0]


@dataclass(frozen=True)
class ChildToClose:
    execution_id: str
    policy: str


def children_to_close(tx: Transaction, limit: int) -> list[ChildToClose]:
    """Open children whose parent has closed, with a policy that closes them too."""
    return [ChildToClose(*row) for row in tx.fetch_all("children_to_close", {"limit": limit})]


def lock_search_keys(tx: Transaction, execution_id: str) -> dict[str, str | None] | None:
    """The execution's search keys ({} if none), its row locked; None: no such one."""
    row = tx.fetch_one("lock_search_keys", {"execution_id": execution_id})
    return None if row is None else dict(row[0] or {})


def write_search_keys(tx: Transaction, execution_id: str, keys: dict[str, str | None]) -> None:
    tx.send(
        "write_search_keys",
        {"execution_id": execution_id, "search_keys": Jsonb(keys) if keys else None},
    )
