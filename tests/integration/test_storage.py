"""The schema: migrations match the models, and Postgres enforces the status table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.engine.replay import HistoryEvent
from app.engine.statuses import OPEN_STATUSES, ExecutionStatus, can_transition
from app.errors import IllegalTransition
from app.storage.history import (
    NOW,
    NewEvent,
    Sql,
    StaleSnapshot,
    expect_current,
    lock_run,
    pipelined_transaction,
    send,
    update_activity,
    write_run,
)
from app.storage.schema import activities, events, executions, metadata, runs
from app.workflows.registry import Registry
from tests.support import engine_named, first_activity_scheduled, terminate_backends


def test_upgrade_from_empty_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _insert_run(conn: object, status: ExecutionStatus) -> uuid.UUID:
    now = datetime.now(UTC)
    execution_id = f"storage-{uuid.uuid4().hex}"
    run_id = uuid.uuid4()
    conn.execute(  # type: ignore[attr-defined]
        insert(executions).values(
            execution_id=execution_id,
            workflow_name="sequential-sum",
            root_execution_id=execution_id,
            current_run_id=run_id,
        )
    )
    conn.execute(  # type: ignore[attr-defined]
        insert(runs).values(
            run_id=run_id,
            execution_id=execution_id,
            run_number=1,
            status=status.value,
            start_time=now,
            end_time=None if status in OPEN_STATUSES else now,
            deadline=now + timedelta(hours=1),
            random_seed=1,
        )
    )
    return run_id


@pytest.mark.parametrize("source", list(ExecutionStatus))
def test_postgres_allows_exactly_the_transitions_of_the_table(
    engine: Engine, source: ExecutionStatus
) -> None:
    for target in ExecutionStatus:
        if target is source:
            continue
        end_time = None if target in OPEN_STATUSES else datetime.now(UTC)
        with engine.connect() as conn, conn.begin():
            run_id = _insert_run(conn, source)
            statement = (
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(status=target.value, end_time=end_time)
            )
            if can_transition(source, target):
                conn.execute(statement)
            else:
                with pytest.raises(
                    IntegrityError, match=r"illegal status transition|can no longer"
                ):
                    with conn.begin_nested():
                        conn.execute(statement)
            conn.rollback()


def test_a_terminal_run_never_changes_again(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn, ExecutionStatus.COMPLETED)
        with pytest.raises(IntegrityError, match="can no longer change"):
            with conn.begin_nested():
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(result={"x": 1}))
        conn.rollback()


def test_a_guarded_update_that_lost_the_race_raises(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
        stale = lock_run(conn, run_id)
        assert stale is not None
        now = datetime.now(UTC)
        conn.execute(
            update(runs).where(runs.c.run_id == run_id).values(status="FAILED", end_time=now)
        )
        with pytest.raises(IllegalTransition):
            write_run(conn, stale, status=ExecutionStatus.RETRYING_AFTER_ERROR)
        conn.rollback()


def test_only_one_open_run_per_execution(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
        execution_id = conn.execute(runs.select().where(runs.c.run_id == run_id)).one().execution_id
        now = datetime.now(UTC)
        with pytest.raises(IntegrityError, match="runs_one_open_run_per_execution"):
            with conn.begin_nested():
                conn.execute(
                    insert(runs).values(
                        run_id=uuid.uuid4(),
                        execution_id=execution_id,
                        run_number=2,
                        status="RUNNING",
                        start_time=now,
                        deadline=now,
                        random_seed=2,
                    )
                )
        conn.rollback()


def test_a_deferred_write_goes_out_with_the_next_one(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        history: list[HistoryEvent] = []
        held = write_run(
            conn,
            run,
            new_events=[NewEvent("FIRST", {"n": 1})],
            values={"processed_event_id": 1, "workflow_task_due_at": NOW},
            history=history,
            defer=True,
        )
        assert held.last_event_id == 1 and [e.event_id for e in history] == [1]
        assert _stored_events(conn, run_id) == []  # nothing sent yet
        write_run(
            conn,
            held,
            new_events=[NewEvent("SECOND", {"n": 2}), NewEvent("THIRD", {"n": 3})],
            values={"workflow_task_due_at": None},
            history=history,
        )
        assert _stored_events(conn, run_id) == [(1, "FIRST"), (2, "SECOND"), (3, "THIRD")]
        assert [e.event_id for e in history] == [1, 2, 3]
        stored = conn.execute(
            select(
                runs.c.last_event_id, runs.c.processed_event_id, runs.c.workflow_task_due_at
            ).where(runs.c.run_id == run_id)
        ).one()
    # Both writes' values, the later one winning where they overlap.
    assert tuple(stored) == (3, 1, None)


def _stored_events(conn: Connection, run_id: uuid.UUID) -> list[tuple[int, str]]:
    rows = conn.execute(
        select(events.c.event_id, events.c.event_type)
        .where(events.c.run_id == run_id)
        .order_by(events.c.event_id)
    )
    return [(row.event_id, row.event_type) for row in rows]


def test_a_pipelined_transaction_commits_its_queued_writes(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
    with pipelined_transaction(engine) as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        write_run(conn, run, new_events=[NewEvent("FIRST", {})], status=ExecutionStatus.COMPLETED)
    with engine.connect() as conn:
        assert _stored_events(conn, run_id)[0] == (1, "FIRST")
        assert conn.execute(select(runs.c.status).where(runs.c.run_id == run_id)).scalar() == (
            "COMPLETED"
        )


def test_a_pipelined_transaction_rolls_back_on_an_error_in_its_body(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
    with pytest.raises(RuntimeError), pipelined_transaction(engine) as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        write_run(conn, run, new_events=[NewEvent("QUEUED", {})])
        raise RuntimeError("the workflow task broke after queueing a write")
    with engine.connect() as conn:
        assert _stored_events(conn, run_id) == []


def test_a_guard_that_fails_in_a_pipelined_transaction_is_an_illegal_transition(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
    with pytest.raises(IllegalTransition), pipelined_transaction(engine) as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        # As if the lock had been lost: the run the caller holds is not the stored one.
        stale = replace(run, status=ExecutionStatus.COMPLETED)
        write_run(
            conn, stale, new_events=[NewEvent("NOT_KEPT", {})], status=ExecutionStatus.RUNNING
        )
    with engine.connect() as conn:
        assert _stored_events(conn, run_id) == []
        assert conn.execute(select(runs.c.status).where(runs.c.run_id == run_id)).scalar() == (
            "RUNNING"
        )


def test_a_queued_write_that_fails_rolls_back_the_whole_transaction(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = _insert_run(conn, ExecutionStatus.RUNNING)
    with pytest.raises(psycopg.errors.UniqueViolation), pipelined_transaction(engine) as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        run = write_run(conn, run, new_events=[NewEvent("ONCE", {}, dedup_key="same")])
        write_run(conn, run, new_events=[NewEvent("TWICE", {}, dedup_key="same")])
    with engine.connect() as conn:
        assert _stored_events(conn, run_id) == []


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_broken_connection_empties_the_pool(database_url: str, pipelined: bool) -> None:
    # After a server restart every pooled connection is dead: the first failure must
    # drop them all, or each would fail a call of its own.
    name = f"broken-{uuid.uuid4().hex[:8]}"
    engine = engine_named(database_url, name)
    try:
        with engine.begin() as conn, engine.connect() as second:
            run_id = _insert_run(conn, ExecutionStatus.RUNNING)
            second.exec_driver_sql("SELECT 1")
        assert engine.pool.checkedin() == 2
        transaction = pipelined_transaction if pipelined else _begin
        terminate_backends(name)
        with pytest.raises(psycopg.OperationalError), transaction(engine) as conn:
            lock_run(conn, run_id)
        with transaction(engine) as conn:
            assert lock_run(conn, run_id) is not None
    finally:
        engine.dispose()


@contextmanager
def _begin(engine: Engine) -> Iterator[Connection]:
    with engine.begin() as conn:
        yield conn


def _scheduled_run(engine: Engine, registry: Registry) -> tuple[uuid.UUID, int]:
    """A run whose activity 1 is scheduled, and its last event id: a snapshot's."""
    run_id, _ = first_activity_scheduled(engine, registry, "sequential-sum", {"values": [1]})
    with engine.connect() as conn:
        last_event_id = conn.execute(
            select(runs.c.last_event_id).where(runs.c.run_id == run_id)
        ).scalar_one()
    return run_id, int(last_event_id)


def _snapshot_write(engine: Engine, run_id: uuid.UUID, last_event_id: int) -> None:
    """A guarded write, as one built from a run snapshot taken at `last_event_id`."""
    with pipelined_transaction(engine) as conn:
        send(conn, expect_current(run_id, 1, 1, last_event_id))
        send(conn, update_activity(run_id, 1, state="COMPLETED"))


def _activity_state(engine: Engine, run_id: uuid.UUID) -> str:
    with engine.connect() as conn:
        state = conn.execute(
            select(activities.c.state).where(activities.c.run_id == run_id, activities.c.seq == 1)
        ).scalar_one()
    return str(state)


def test_a_snapshot_guard_lets_the_write_through_while_the_run_is_unchanged(
    engine: Engine, registry: Registry
) -> None:
    run_id, last_event_id = _scheduled_run(engine, registry)

    _snapshot_write(engine, run_id, last_event_id)

    assert _activity_state(engine, run_id) == "COMPLETED"


@pytest.mark.parametrize(
    "change",
    [
        {"runs": {"last_event_id": runs.c.last_event_id + 1}},
        {"runs": {"workflow_task_due_at": datetime.now(UTC)}},
        {"runs": {"status": ExecutionStatus.RETRYING_AFTER_ERROR.value}},
        {"activities": {"state": "BACKING_OFF"}},
        {"activities": {"attempt": 2}},
    ],
    ids=["new-event", "workflow-task-due", "retrying", "activity-state", "activity-attempt"],
)
def test_a_snapshot_guard_fails_the_write_once_the_run_changed(
    engine: Engine, registry: Registry, change: dict[str, dict[str, Any]]
) -> None:
    run_id, snapshot_at = _scheduled_run(engine, registry)
    with engine.begin() as conn:
        if "runs" in change:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(change["runs"]))
        else:
            conn.execute(
                update(activities)
                .where(activities.c.run_id == run_id, activities.c.seq == 1)
                .values(change["activities"])
            )
    changed_state = _activity_state(engine, run_id)

    with pytest.raises(StaleSnapshot):
        _snapshot_write(engine, run_id, snapshot_at)

    assert _activity_state(engine, run_id) == changed_state  # the write was not applied


def test_a_connection_stays_usable_after_failed_pipelined_transactions(
    database_url: str, registry: Registry
) -> None:
    # psycopg prepares a statement on its sixth use, in the pipeline that sends it. When
    # an earlier statement of that pipeline fails, the server skips the preparation,
    # yet psycopg counts the statement as prepared: COMMIT, say, and every later
    # transaction on that connection would fail for a statement that does not exist.
    engine = engine_named(database_url, "failed-pipelines")
    try:
        run_id, _ = _scheduled_run(engine, registry)
        for _ in range(8):
            with pytest.raises(psycopg.errors.DivisionByZero):
                with pipelined_transaction(engine) as conn:
                    # Fails once COMMIT is queued behind it (no constant to fold).
                    send(conn, Sql("SELECT 1 / x FROM (SELECT 0 AS x FROM pg_sleep(0.02)) s"))
                    send(conn, update_activity(run_id, 1, state="STARTED"))
            with pipelined_transaction(engine) as conn:
                send(conn, update_activity(run_id, 1, state="SCHEDULED"))

        assert _activity_state(engine, run_id) == "SCHEDULED"
    finally:
        engine.dispose()
