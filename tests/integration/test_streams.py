"""The stream's sequencer against a real Postgres: events are numbered in the order
they became visible, so a reader resuming from a position never misses one whose
transaction committed after a later one's."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import Engine

from app.engine.executions import get_history, insert_execution
from app.engine.resets import reset
from app.engine.workflow_tasks import run_workflow_task
from app.settings import libpq_url
from app.storage.metrics import read_totals
from app.storage.streams import StreamFilter, number_new_events, read_stream
from app.storage.transactions import autocommit, transaction
from app.workflows.registry import Registry
from tests.integration.driving import drive


def _start(engine: Engine, registry: Registry) -> tuple[str, uuid.UUID]:
    execution_id = f"stream-{uuid.uuid4().hex}"
    record = insert_execution(
        engine, registry.workflow("sequential-sum"), execution_id=execution_id, input_value=[1]
    )
    return execution_id, record.run_id


def _numbered(engine: Engine, execution_id: str) -> list[tuple[int, str]]:
    with autocommit(engine) as tx:
        events = read_stream(tx, 0, 1000, StreamFilter(execution_id=execution_id))
    return [(e.position, e.event_type) for e in events]


def _number_all(engine: Engine) -> None:
    with transaction(engine) as tx:
        while number_new_events(tx) is not None:
            pass


def test_an_event_committed_late_is_numbered_before_those_of_newer_transactions(
    engine: Engine, registry: Registry, database_url: str
) -> None:
    slow_id, slow_run = _start(engine, registry)
    _number_all(engine)
    with psycopg.connect(libpq_url(database_url)) as slow:
        # An older transaction takes its event's sequence first, and commits last.
        slow.execute(
            "INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,"
            " event_timestamp) VALUES (%s, 2, %s, 'ACTIVITY_TASK_STARTED', %s, 0)",
            (slow_run, slow_id, psycopg.types.json.Jsonb({"task_id": "t", "seq": 1})),
        )
        fast_id, _ = _start(engine, registry)  # committed at once
        _number_all(engine)
        # Not yet: an older transaction is still running.
        assert _numbered(engine, fast_id) == []
        slow.commit()
    _number_all(engine)
    (late,) = [p for p, t in _numbered(engine, slow_id) if t == "ACTIVITY_TASK_STARTED"]
    ((fast, fast_type),) = _numbered(engine, fast_id)
    assert fast_type == "WORKFLOW_EXECUTION_STARTED"
    assert late < fast


def test_only_streamed_types_are_numbered_and_two_sequencers_never_share_a_number(
    engine: Engine, registry: Registry
) -> None:
    execution_ids = [_start(engine, registry)[0] for _ in range(20)]
    with transaction(engine) as first, transaction(engine) as second:
        # The second finds the lock held and numbers nothing.
        number_new_events(first)
        assert number_new_events(second) is None
    _number_all(engine)
    positions = [p for e in execution_ids for p, _ in _numbered(engine, e)]
    assert len(positions) == len(set(positions)) == 20
    with autocommit(engine) as tx:
        everything = read_stream(tx, 0, 100_000)
    assert {e.event_type for e in everything} <= {
        "WORKFLOW_EXECUTION_STARTED",
        "ACTIVITY_TASK_STARTED",
        "ACTIVITY_TASK_COMPLETED",
        "WORKFLOW_EXECUTION_COMPLETED",
        "WORKFLOW_EXECUTION_FAILED",
        "WORKFLOW_EXECUTION_CANCELED",
        "WORKFLOW_EXECUTION_CONTINUED_AS_NEW",
        "WORKFLOW_EXECUTION_TERMINATED",
        "WORKFLOW_EXECUTION_TIMED_OUT",
        "WORKFLOW_TASK_FAILED",
        "ACTIVITY_TASK_RETRYING",
        "ACTIVITY_TASK_FAILED",
    }
    all_positions = [e.position for e in everything]
    assert all_positions == sorted(set(all_positions))


def test_a_reset_run_s_copied_history_is_neither_streamed_nor_counted_again(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    execution_id = f"stream-reset-{uuid.uuid4().hex}"
    record = insert_execution(
        engine,
        registry.workflow("approval-saga"),
        execution_id=execution_id,
        input_value={"folder": str(tmp_path), "item": "book"},
    )
    # Reserved, then waiting for a decision: the activity's outcome, the workflow task
    # and the timer were written by the one last transaction.
    drive(engine, registry, run_workflow_task(engine, registry, record.run_id))
    _number_all(engine)  # the sequencer's cursor now stands on that transaction
    counted = _attempts_counted(engine)
    history = get_history(engine, record.run_id)
    last_point = max(e.event_id for e in history if e.event_type == "WORKFLOW_TASK_COMPLETED")
    assert any(e.event_type == "ACTIVITY_TASK_COMPLETED" for e in history[last_point - 2 :])

    # The copy of the activity's outcome keeps that transaction's id.
    reset(engine, execution_id, last_point, reason="again")
    _number_all(engine)

    types = [t for _, t in _numbered(engine, execution_id)]
    assert types == [
        "WORKFLOW_EXECUTION_STARTED",
        "ACTIVITY_TASK_STARTED",
        "ACTIVITY_TASK_COMPLETED",
        "WORKFLOW_EXECUTION_TERMINATED",  # the old run, which the reset ended
    ]
    assert _attempts_counted(engine) == counted


def _attempts_counted(engine: Engine) -> float:
    with autocommit(engine) as tx:
        totals = read_totals(tx)
    return sum(t.value for t in totals if t.metric == "activity_attempts")
