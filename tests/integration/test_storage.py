"""The schema and the storage layer: migrations match the models, Postgres enforces the
status and state tables, steps are written whole or not at all, and every question
the sweeper asks has an index."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.errors import DatabaseUnavailable, IllegalTransition
from app.model.activity_states import ACTIVITY_TRANSITIONS, ActivityState
from app.model.statuses import OPEN_STATUSES, ExecutionStatus, can_transition
from app.storage.queries import QUERIES
from app.storage.runs import NewActivity, Step, lock_run_state, write_step
from app.storage.schema import activities, events, executions, metadata, runs
from app.storage.transactions import transaction
from tests.support import engine_named, terminate_backends


def test_upgrade_from_empty_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def _insert_run(conn: Connection, status: ExecutionStatus = ExecutionStatus.RUNNING) -> uuid.UUID:
    now = datetime.now(UTC)
    execution_id = f"storage-{uuid.uuid4().hex}"
    run_id = uuid.uuid4()
    conn.execute(
        insert(executions).values(
            execution_id=execution_id,
            workflow_name="sequential-sum",
            root_execution_id=execution_id,
            current_run_id=run_id,
            first_execution_run_id=run_id,
        )
    )
    conn.execute(
        insert(runs).values(
            run_id=run_id,
            execution_id=execution_id,
            run_number=1,
            workflow_name="sequential-sum",
            root_execution_id=execution_id,
            status=status.value,
            start_time=now,
            end_time=None if status in OPEN_STATUSES else now,
            deadline=now + timedelta(hours=1),
            random_seed=1,
        )
    )
    return run_id


def _insert_activity(conn: Connection, run_id: uuid.UUID, state: ActivityState) -> None:
    conn.execute(
        insert(activities).values(
            run_id=run_id,
            seq=1,
            activity_name="add",
            input={},
            state=state.value,
            retry_policy={},
            start_to_close_seconds=10,
            scheduled_at=datetime.now(UTC),
            **_state_columns(state),
        )
    )


def _state_columns(state: ActivityState) -> dict[str, Any]:
    """What the constraints demand of a row in `state`."""
    now = datetime.now(UTC)
    return {
        "worker_task_id": "task" if state is ActivityState.STARTED else None,
        "attempt_deadline": now if state is ActivityState.STARTED else None,
        "next_attempt_at": now if state is ActivityState.BACKING_OFF else None,
    }


@pytest.mark.parametrize("source", list(ExecutionStatus))
def test_postgres_allows_exactly_the_run_transitions_of_the_table(
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
                with pytest.raises(DBAPIError, match=r"illegal run status|can no longer"):
                    with conn.begin_nested():
                        conn.execute(statement)
            conn.rollback()


@pytest.mark.parametrize("source", list(ActivityState))
def test_postgres_allows_exactly_the_activity_transitions_of_the_table(
    engine: Engine, source: ActivityState
) -> None:
    for target in ActivityState:
        if target is source:
            continue
        with engine.connect() as conn, conn.begin():
            run_id = _insert_run(conn)
            _insert_activity(conn, run_id, source)
            statement = (
                update(activities)
                .where(activities.c.run_id == run_id)
                .values(state=target.value, **_state_columns(target))
            )
            if target in ACTIVITY_TRANSITIONS[source]:
                conn.execute(statement)
            else:
                with pytest.raises(DBAPIError, match=r"illegal activity state|can no longer"):
                    with conn.begin_nested():
                        conn.execute(statement)
            conn.rollback()


def test_only_a_running_attempt_names_its_task_and_deadline(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn)
        _insert_activity(conn, run_id, ActivityState.STARTED)
        with pytest.raises(IntegrityError, match="activities_started_iff_running"):
            with conn.begin_nested():
                conn.execute(
                    update(activities)
                    .where(activities.c.run_id == run_id)
                    .values(worker_task_id=None)
                )
        conn.rollback()


def test_a_terminal_run_never_changes_again(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn, ExecutionStatus.COMPLETED)
        with pytest.raises(DBAPIError, match="can no longer change"):
            with conn.begin_nested():
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(result={"x": 1}))
        conn.rollback()


def test_only_one_open_run_per_execution(engine: Engine) -> None:
    with engine.connect() as conn, conn.begin():
        run_id = _insert_run(conn)
        execution_id = conn.execute(runs.select().where(runs.c.run_id == run_id)).one().execution_id
        now = datetime.now(UTC)
        with pytest.raises(IntegrityError, match="runs_one_open_run_per_execution"):
            with conn.begin_nested():
                conn.execute(
                    insert(runs).values(
                        run_id=uuid.uuid4(),
                        execution_id=execution_id,
                        run_number=2,
                        workflow_name="sequential-sum",
                        root_execution_id=execution_id,
                        status="RUNNING",
                        start_time=now,
                        deadline=now,
                        random_seed=2,
                    )
                )
        conn.rollback()


def _new_run(engine: Engine) -> uuid.UUID:
    with engine.begin() as conn:
        return _insert_run(conn)


def _stored(engine: Engine, run_id: uuid.UUID) -> tuple[list[tuple[int, str]], Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.event_id, events.c.event_type)
            .where(events.c.run_id == run_id)
            .order_by(events.c.event_id)
        )
        run = conn.execute(select(runs).where(runs.c.run_id == run_id)).one()
    return [(row.event_id, row.event_type) for row in rows], run


def _scheduling(step: Step, seq: int = 1) -> None:
    step.record("ACTIVITY_TASK_SCHEDULED", {"seq": seq})
    step.new_activities.append(
        NewActivity(seq, "add", {"total": 0, "value": 1}, ActivityState.SCHEDULED, {}, 10.0)
    )


def test_a_step_is_written_in_one_statement_with_its_event_ids(engine: Engine) -> None:
    run_id = _new_run(engine)
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        assert state is not None
        step = Step(run=state.run, processed_event_id=0, workflow_task="due")
        first = step.record("FIRST", {"n": 1})
        _scheduling(step)
        write_step(tx, step)
    assert first == 1
    stored, run = _stored(engine, run_id)
    assert stored == [(1, "FIRST"), (2, "ACTIVITY_TASK_SCHEDULED")]
    assert run.last_event_id == 2 and run.workflow_task_due_at is not None


def test_a_step_built_on_a_stale_read_writes_nothing(engine: Engine) -> None:
    run_id = _new_run(engine)
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        assert state is not None
        step = Step(run=state.run)
        step.record("FIRST", {})
        write_step(tx, step)
    with pytest.raises(IllegalTransition), transaction(engine) as tx:
        # As if the lock had been lost: the run read earlier is not the stored one.
        stale = Step(run=state.run)
        stale.record("NOT_KEPT", {})
        _scheduling(stale)
        write_step(tx, stale)
    stored, run = _stored(engine, run_id)
    assert stored == [(1, "FIRST")] and run.last_event_id == 1


def test_a_status_change_from_a_status_the_run_is_not_in_writes_nothing(engine: Engine) -> None:
    run_id = _new_run(engine)
    with pytest.raises(IllegalTransition), transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        assert state is not None
        # RETRYING_AFTER_ERROR -> RUNNING is legal, but the run is RUNNING.
        step = Step(run=replace(state.run, status=ExecutionStatus.RETRYING_AFTER_ERROR))
        step.record("NOT_KEPT", {})
        step.status = ExecutionStatus.RUNNING
        write_step(tx, step)
    stored, run = _stored(engine, run_id)
    assert stored == [] and run.status == "RUNNING"


def test_a_closing_step_abandons_what_is_in_flight_and_names_what_runs(engine: Engine) -> None:
    run_id = _new_run(engine)
    with engine.begin() as conn:
        _insert_activity(conn, run_id, ActivityState.STARTED)
    with transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        assert state is not None
        step = Step(run=state.run, status=ExecutionStatus.COMPLETED, closing=True, result=[1])
        step.record("WORKFLOW_EXECUTION_COMPLETED", {})
        assert write_step(tx, step) == ["task"]
    _, run = _stored(engine, run_id)
    assert run.status == "COMPLETED" and run.end_time is not None and run.result == [1]
    with engine.connect() as conn:
        states = conn.execute(select(activities.c.state).where(activities.c.run_id == run_id))
        assert states.scalars().all() == ["ABANDONED"]


def test_a_transaction_rolls_back_what_its_body_queued_when_it_raises(engine: Engine) -> None:
    run_id = _new_run(engine)
    with pytest.raises(RuntimeError), transaction(engine) as tx:
        state = lock_run_state(tx, run_id)
        assert state is not None
        step = Step(run=state.run)
        step.record("QUEUED", {})
        write_step(tx, step)
        raise RuntimeError("a bug after queueing a write")
    assert _stored(engine, run_id)[0] == []


def test_a_connection_stays_usable_after_failed_transactions(engine: Engine) -> None:
    # psycopg prepares a statement on its sixth use, in the pipeline that sends it; a
    # failure earlier in that pipeline must not leave it naming a statement that the
    # server never prepared.
    run_id = _new_run(engine)
    for _ in range(8):
        with pytest.raises(IllegalTransition), transaction(engine) as tx:
            state = lock_run_state(tx, run_id)
            assert state is not None
            stale = Step(run=replace(state.run, last_event_id=state.run.last_event_id - 1))
            stale.record("NOT_KEPT", {})
            write_step(tx, stale)
        with transaction(engine) as tx:
            state = lock_run_state(tx, run_id)
            assert state is not None
            step = Step(run=state.run)
            step.record("KEPT", {})
            write_step(tx, step)
    assert len(_stored(engine, run_id)[0]) == 8


def test_a_read_only_database_is_unavailable_not_wrong(engine: Engine) -> None:
    run_id = _new_run(engine)
    with pytest.raises(DatabaseUnavailable), transaction(engine) as tx:
        tx.driver.execute("SET TRANSACTION READ ONLY")
        state = lock_run_state(tx, run_id)
        assert state is not None
        step = Step(run=state.run)
        step.record("NOT_KEPT", {})
        write_step(tx, step)


def test_a_broken_connection_empties_the_pool(database_url: str) -> None:
    # After a server restart every pooled connection is dead: the first failure must
    # drop them all, or each would fail a call of its own.
    name = f"broken-{uuid.uuid4().hex[:8]}"
    engine = engine_named(database_url, name)
    try:
        with engine.begin() as conn, engine.connect() as second:
            run_id = _insert_run(conn)
            second.exec_driver_sql("SELECT 1")
        assert engine.pool.checkedin() == 2
        terminate_backends(name)
        with pytest.raises(DatabaseUnavailable), transaction(engine) as tx:
            lock_run_state(tx, run_id)
        with transaction(engine) as tx:
            assert lock_run_state(tx, run_id) is not None
    finally:
        engine.dispose()


def test_a_server_that_does_not_answer_is_unavailable() -> None:
    from app.storage.db import make_engine

    nowhere = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(DatabaseUnavailable), transaction(nowhere) as tx:
            lock_run_state(tx, uuid.uuid4())
    finally:
        nowhere.dispose()


SWEEPER_QUERIES = [
    ("overdue_runs", {"limit": 100}),
    ("late_attempts", {"limit": 100}),
    ("rearm_stalled_workflow_tasks", {"stalled_seconds": 30, "limit": 100}),
    ("rearm_stalled_scheduled_activities", {"stalled_seconds": 30, "limit": 100}),
    ("rearm_stalled_retries", {"stalled_seconds": 30, "limit": 100}),
]


@pytest.mark.parametrize(("name", "params"), SWEEPER_QUERIES)
def test_every_sweeper_question_is_answered_by_an_index(
    engine: Engine, name: str, params: dict[str, Any]
) -> None:
    # With sequential scans priced out, a plan still scanning a table has no index to use.
    driver_sql = QUERIES[name].text
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cursor:
            cursor.execute(f"EXPLAIN {driver_sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        conn.rollback()
    assert "Seq Scan" not in plan, plan


def test_every_query_says_what_it_does() -> None:
    assert QUERIES
    for query in QUERIES.values():
        assert query.description, query.name
        assert query.text.strip() and not query.text.rstrip().endswith(";")
