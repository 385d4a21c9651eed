"""The engine's steps against a real Postgres, called directly (no broker, no worker)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from app.engine.activities.claim import Attempt, NotClaimed, claim
from app.engine.activities.outcome import record_lost_attempt, record_outcome
from app.engine.activities.run import Succeeded, failed, run_attempt
from app.engine.dispatch import ActivityDispatch, FollowUp
from app.engine.executions import get_execution, get_history, insert_execution
from app.engine.sweeper import sweep
from app.engine.workflow_tasks import run_workflow_task
from app.model import events as ev
from app.model.statuses import ExecutionStatus
from app.settings import libpq_url
from app.storage.db import make_engine
from app.workflows.registry import Registry


def _start(engine: Engine, registry: Registry, name: str, value: object) -> uuid.UUID:
    record = insert_execution(
        engine,
        registry.workflow(name),
        execution_id=f"engine-{uuid.uuid4().hex}",
        input_value=value,
    )
    return record.run_id


def _activities(follow_up: FollowUp) -> list[ActivityDispatch]:
    return [a for d in follow_up.dispatches for a in d.activities]


def _claim(
    engine: Engine, registry: Registry, activity: ActivityDispatch, task_id: str | None = None
) -> Attempt | NotClaimed:
    return claim(
        engine,
        registry,
        activity.run_id,
        activity.seq,
        activity_name=activity.activity_name,
        task_id=task_id or uuid.uuid4().hex,
    )


def _claim_first(engine: Engine, registry: Registry, name: str, value: object) -> Attempt:
    """Start a run, run its first workflow task and claim the activity it schedules."""
    run_id = _start(engine, registry, name, value)
    (activity, *_) = _activities(run_workflow_task(engine, registry, run_id))
    attempt = _claim(engine, registry, activity)
    assert isinstance(attempt, Attempt)
    return attempt


def _types(engine: Engine, run_id: uuid.UUID) -> list[str]:
    return [e.event_type for e in get_history(engine, run_id)]


def _execution(engine: Engine, run_id: uuid.UUID) -> Any:
    with engine.connect() as conn:
        execution_id = conn.execute(
            text("SELECT execution_id FROM runs WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()
    return get_execution(engine, execution_id)


def _sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def test_a_run_advances_step_by_step_to_completion(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [4, 5]})
    (activity,) = _activities(run_workflow_task(engine, registry, run_id))
    for expected_total in (4, 9):
        attempt = _claim(engine, registry, activity)
        assert isinstance(attempt, Attempt)
        outcome = run_attempt(attempt)
        assert outcome == Succeeded(expected_total)
        follow_up = record_outcome(engine, registry, attempt, outcome)
        assert follow_up.advanced
        if expected_total == 4:
            (activity,) = _activities(follow_up)
            assert activity.seq == 2
        else:
            assert follow_up.reason == "completed" and not follow_up.dispatches
    assert run_workflow_task(engine, registry, run_id).reason == "run closed"
    history = get_history(engine, run_id)
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    assert history[-1].event_type == ev.WORKFLOW_EXECUTION_COMPLETED
    assert history[-1].attributes["result"] == {"type": "json", "value": {"total": 9}}
    stamps = [e.event_timestamp for e in history]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_a_redelivered_workflow_task_records_nothing(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    assert len(_activities(run_workflow_task(engine, registry, run_id))) == 1
    before = _types(engine, run_id)
    assert run_workflow_task(engine, registry, run_id).reason == "nothing to do"
    assert _types(engine, run_id) == before


def test_a_second_message_never_claims_a_started_or_finished_attempt(
    engine: Engine, registry: Registry
) -> None:
    first = _claim_first(engine, registry, "sequential-sum", {"values": [7]})
    activity = ActivityDispatch(first.run_id, 1, "add", 10)
    assert _claim(engine, registry, activity) == NotClaimed("attempt in progress elsewhere")
    # Not even by the task that claimed it, delivered again: it may still be running.
    assert _claim(engine, registry, activity, first.task_id) == NotClaimed(
        "attempt in progress elsewhere"
    )
    outcome = run_attempt(first)
    assert record_outcome(engine, registry, first, outcome).reason == "completed"
    again = record_outcome(engine, registry, first, outcome)
    assert again.reason == "outcome discarded: run closed"
    assert _claim(engine, registry, activity) == NotClaimed("run closed")
    types = _types(engine, first.run_id)
    assert types.count(ev.ACTIVITY_TASK_STARTED) == 1
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 1


def test_the_claim_records_the_start_with_the_task_that_runs_it(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1, 2]})
    started = get_history(engine, attempt.run_id)[-1]
    assert started.event_type == ev.ACTIVITY_TASK_STARTED
    assert started.attributes["worker_task_id"] == attempt.task_id
    assert started.attributes["attempt"] == 1
    assert started.attributes["input"] == {"type": "json", "value": {"total": 0, "value": 1}}
    assert 5 < attempt.seconds_left <= 10  # add's start_to_close_timeout, counted down


def test_a_late_result_is_discarded_and_recorded_as_a_timeout(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    _sql(
        engine,
        "UPDATE activities SET attempt_deadline = now() - interval '1 second' WHERE run_id = :r",
        r=attempt.run_id,
    )
    follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    # add retries by the default policy: its next attempt goes out as a message of its own.
    assert follow_up.failure is not None and follow_up.failure["type"] == "StartToCloseTimeout"
    (retry,) = _activities(follow_up)
    assert retry.seq == 1 and follow_up.dispatches[0].countdown == 1.0
    history = get_history(engine, attempt.run_id)
    assert ev.ACTIVITY_TASK_COMPLETED not in [e.event_type for e in history]
    (retrying,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_RETRYING]
    assert retrying.attributes["failure"]["type"] == "StartToCloseTimeout"


def test_an_outcome_after_the_run_s_deadline_times_the_run_out_instead(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    _sql(engine, "UPDATE runs SET deadline = start_time WHERE run_id = :r", r=attempt.run_id)
    follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert follow_up.reason == "run timed out"
    # The attempt itself was the one running: this task stops nothing else.
    assert follow_up.stop_task_ids == ()
    types = _types(engine, attempt.run_id)
    assert types[-1] == ev.WORKFLOW_EXECUTION_TIMED_OUT
    assert ev.ACTIVITY_TASK_COMPLETED not in types
    assert _execution(engine, attempt.run_id).status is ExecutionStatus.TIMED_OUT


def test_an_outcome_is_tried_until_the_deadline_and_the_code_is_not_run_again(
    engine: Engine, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    nowhere = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    short = replace(attempt, deadline=time.monotonic() + 1)
    monkeypatch.setattr("app.engine.activities.outcome.REPORT_LOSS_FOR_SECONDS", 1.0)
    try:
        follow_up = record_outcome(nowhere, registry, short, Succeeded(1))
    finally:
        nowhere.dispose()
    assert follow_up.reason == "outcome not recorded: Postgres unavailable"
    assert _types(engine, attempt.run_id)[-1] == ev.ACTIVITY_TASK_STARTED


@pytest.fixture
def outage(database_url: str) -> Iterator[tuple[Engine, Callable[[bool], None]]]:
    """An engine of a role of its own, and a switch that cuts it off Postgres (its
    connections closed, new ones refused as "too many connections") and lets it back."""
    role = f"outage_{uuid.uuid4().hex[:8]}"
    admin_url = libpq_url(database_url)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    engine = make_engine(database_url.replace("postgres@", f"{role}@"))

    def cut_off(down: bool) -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT {0 if down else -1}")
            if down:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (role,),
                )

    try:
        yield engine, cut_off
    finally:
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_an_outcome_lost_to_an_outage_past_the_deadline_is_reported_as_such(
    engine: Engine, registry: Registry, outage: tuple[Engine, Callable[[bool], None]]
) -> None:
    cut_off_engine, cut_off = outage
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    short = replace(attempt, deadline=time.monotonic() + 1)
    cut_off(True)
    recording = ThreadPoolExecutor(1).submit(
        record_outcome, cut_off_engine, registry, short, Succeeded(1)
    )
    time.sleep(2)  # the outage outlasts the attempt's deadline
    cut_off(False)
    follow_up = recording.result(timeout=30)
    assert follow_up.failure is not None and _activities(follow_up)
    history = get_history(engine, attempt.run_id)
    assert ev.ACTIVITY_TASK_COMPLETED not in [e.event_type for e in history]
    (retrying,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_RETRYING]
    assert retrying.attributes["failure"]["type"] == "OutcomeNotRecorded"


def test_an_outcome_postgres_refuses_is_reported_as_not_recorded(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    # A write that fails for a reason other than an outage (as a bug would).
    _sql(
        engine,
        f"""CREATE FUNCTION refuse_{attempt.run_id.hex}() RETURNS trigger AS $$
        BEGIN
            IF NEW.run_id = '{attempt.run_id}' AND NEW.event_type = 'ACTIVITY_TASK_COMPLETED'
            THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22000'; END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER refuse_{attempt.run_id.hex} BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION refuse_{attempt.run_id.hex}()""",
    )
    try:
        follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    finally:
        _sql(engine, f"DROP TRIGGER refuse_{attempt.run_id.hex} ON events")
        _sql(engine, f"DROP FUNCTION refuse_{attempt.run_id.hex}()")
    assert follow_up.failure is not None and _activities(follow_up)
    (retrying,) = [
        e for e in get_history(engine, attempt.run_id) if e.event_type == ev.ACTIVITY_TASK_RETRYING
    ]
    failure = retrying.attributes["failure"]
    assert failure["type"] == "OutcomeNotRecorded" and "refused" in failure["message"]


def test_the_sweeper_times_out_overdue_runs_and_stops_their_attempts(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    _sql(engine, "UPDATE runs SET deadline = start_time WHERE run_id = :r", r=attempt.run_id)
    stopped = {t for f in sweep(engine, stalled_after_seconds=60) for t in f.stop_task_ids}
    assert attempt.task_id in stopped
    record = _execution(engine, attempt.run_id)
    assert record.status is ExecutionStatus.TIMED_OUT and record.end_time is not None
    follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert follow_up.reason == "outcome discarded: run closed"
    types = _types(engine, attempt.run_id)
    assert types[-1] == ev.WORKFLOW_EXECUTION_TIMED_OUT
    assert ev.ACTIVITY_TASK_COMPLETED not in types


def test_the_sweeper_times_out_a_late_attempt_and_retries_it(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    _sql(
        engine,
        "UPDATE activities SET attempt_deadline = now() WHERE run_id = :r",
        r=attempt.run_id,
    )
    follow_ups = [
        f for f in sweep(engine, stalled_after_seconds=60) if attempt.task_id in f.stop_task_ids
    ]
    (follow_up,) = follow_ups
    (retry,) = _activities(follow_up)
    assert retry.seq == 1 and follow_up.dispatches[0].countdown == 1.0
    (retrying,) = [
        e for e in get_history(engine, attempt.run_id) if e.event_type == ev.ACTIVITY_TASK_RETRYING
    ]
    assert retrying.attributes["failure"]["type"] == "StartToCloseTimeout"
    assert _execution(engine, attempt.run_id).status is ExecutionStatus.RETRYING_AFTER_ERROR
    # The late attempt's result is not written; the next attempt's is.
    assert record_outcome(engine, registry, attempt, run_attempt(attempt)).reason.startswith(
        "outcome discarded"
    )


def test_the_sweeper_passes_over_a_run_someone_holds(
    engine: Engine, registry: Registry, database_url: str
) -> None:
    held, free = (
        _claim_first(engine, registry, "sequential-sum", {"values": [1]}) for _ in range(2)
    )
    for attempt in (held, free):
        _sql(engine, "UPDATE runs SET deadline = start_time WHERE run_id = :r", r=attempt.run_id)
    with psycopg.connect(libpq_url(database_url)) as holder:
        holder.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (held.run_id,))
        sweep(engine, stalled_after_seconds=60)
        assert _execution(engine, free.run_id).status is ExecutionStatus.TIMED_OUT
        assert _execution(engine, held.run_id).status is ExecutionStatus.RUNNING
    sweep(engine, stalled_after_seconds=60)
    assert _execution(engine, held.run_id).status is ExecutionStatus.TIMED_OUT


def test_the_sweeper_sends_again_what_waited_too_long_for_its_message(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    sent = [d for f in sweep(engine, stalled_after_seconds=0) for d in f.dispatches]
    assert any(d.run_id == run_id and not d.activities for d in sent)
    sent = [d for f in sweep(engine, stalled_after_seconds=60) for d in f.dispatches]
    assert run_id not in {d.run_id for d in sent}
    (activity,) = _activities(run_workflow_task(engine, registry, run_id))
    sent = [a for f in sweep(engine, stalled_after_seconds=0) for a in _activities(f)]
    assert activity in sent


def test_a_lost_attempt_is_recorded_as_such_and_retried(engine: Engine, registry: Registry) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1]})
    lost = failed("WorkerLost", "the process running the attempt exited")
    elsewhere = record_lost_attempt(engine, attempt.run_id, 1, task_id="another-task", outcome=lost)
    assert elsewhere.reason == "the attempt is no longer current"
    follow_up = record_lost_attempt(
        engine, attempt.run_id, 1, task_id=attempt.task_id, outcome=lost
    )
    (retry,) = _activities(follow_up)
    assert retry.seq == 1 and follow_up.dispatches[0].countdown == 1.0
    (retrying,) = [
        e for e in get_history(engine, attempt.run_id) if e.event_type == ev.ACTIVITY_TASK_RETRYING
    ]
    assert retrying.attributes["failure"]["type"] == "WorkerLost"
    assert record_outcome(engine, registry, attempt, Succeeded(1)).reason.startswith(
        "outcome discarded"
    )
    second = _claim(engine, registry, ActivityDispatch(attempt.run_id, 1, "add", 10))
    assert second == NotClaimed("next attempt not due yet", retry_in=second.retry_in)  # type: ignore[union-attr]


def test_a_workflow_task_that_fails_is_recorded_once_and_retried_until_fixed(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [3]})
    without = Registry(activities=dict(registry.activities))
    first = run_workflow_task(engine, without, run_id)
    (retry,) = first.dispatches
    assert retry.countdown == 1.0 and not retry.activities
    assert _types(engine, run_id)[-1] == ev.WORKFLOW_TASK_FAILED
    (failure,) = [e for e in get_history(engine, run_id) if e.event_type == ev.WORKFLOW_TASK_FAILED]
    assert failure.attributes["failure"]["type"] == "UnknownWorkflow"
    # Delivered early (clocks), it waits; due, it fails again without a second event.
    assert run_workflow_task(engine, without, run_id).reason == "not due yet"
    _sql(engine, "UPDATE runs SET workflow_task_due_at = now() WHERE run_id = :r", r=run_id)
    again = run_workflow_task(engine, without, run_id)
    assert again.dispatches[0].countdown == 2.0
    assert _types(engine, run_id).count(ev.WORKFLOW_TASK_FAILED) == 1
    assert _execution(engine, run_id).status is ExecutionStatus.RUNNING
    # The fix deployed: the next try goes on.
    _sql(engine, "UPDATE runs SET workflow_task_due_at = now() WHERE run_id = :r", r=run_id)
    fixed = run_workflow_task(engine, registry, run_id)
    assert [a.seq for a in _activities(fixed)] == [1]


def test_replay_compares_what_each_activity_call_asks_for(
    engine: Engine, registry: Registry
) -> None:
    attempt = _claim_first(engine, registry, "sequential-sum", {"values": [1, 2]})
    # Stand-in for code that changed under a running execution: history says the first
    # call asked for another input than the code does now.
    _sql(
        engine,
        'UPDATE events SET attributes = attributes || \'{"input_digest": "0"}\''
        " WHERE run_id = :r AND event_type = 'ACTIVITY_TASK_SCHEDULED'",
        r=attempt.run_id,
    )
    follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert follow_up.dispatches[0].countdown == 1.0 and not follow_up.dispatches[0].activities
    history = get_history(engine, attempt.run_id)
    assert [e.event_type for e in history[-2:]] == [
        ev.ACTIVITY_TASK_COMPLETED,
        ev.WORKFLOW_TASK_FAILED,
    ]
    failure = history[-1].attributes["failure"]
    assert failure["type"] == "NonDeterminismError"
    assert "activity #1 'add'" in failure["message"]


def test_activities_started_by_a_closing_workflow_are_abandoned(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "fire-and-forget", None)
    assert run_workflow_task(engine, registry, run_id).reason == "completed"
    record = _execution(engine, run_id)
    assert record.status is ExecutionStatus.COMPLETED and record.result == "done"
    with engine.connect() as conn:
        states = conn.execute(text("SELECT state FROM activities WHERE run_id = :r"), {"r": run_id})
        assert list(states.scalars()) == ["ABANDONED"]
    sent = [d for f in sweep(engine, stalled_after_seconds=0) for d in f.dispatches]
    assert run_id not in {d.run_id for d in sent}


def test_a_workflow_whose_constructor_raises_fails(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "unbuildable", None)
    run_workflow_task(engine, registry, run_id)
    record = _execution(engine, run_id)
    assert record.status is ExecutionStatus.FAILED
    assert record.error == {"type": "RuntimeError", "message": "cannot build the workflow"}


def test_a_parallel_run_completes_as_its_outcomes_commit_in_turn(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "fan-out-squares", {"values": [2, 3, 4]})
    attempts = [
        _claim(engine, registry, a)
        for a in _activities(run_workflow_task(engine, registry, run_id))
    ]
    for attempt in attempts:
        assert isinstance(attempt, Attempt)
        assert record_outcome(engine, registry, attempt, run_attempt(attempt)).advanced
    record = _execution(engine, run_id)
    assert record.status is ExecutionStatus.COMPLETED
    assert record.result == {"squares": [4, 9, 16], "sum": 29}


def test_a_retried_activity_that_succeeds_settles_the_run_back_to_running(
    engine: Engine, registry: Registry, tmp_path: Any
) -> None:
    attempt = _claim_first(engine, registry, "flaky", {"folder": str(tmp_path), "failures": 1})
    first = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert first.failure is not None and first.failure["type"] == "ConnectionError"
    assert first.dispatches[0].countdown == pytest.approx(0.1)
    assert _execution(engine, attempt.run_id).status is ExecutionStatus.RETRYING_AFTER_ERROR
    _sql(
        engine, "UPDATE activities SET next_attempt_at = now() WHERE run_id = :r", r=attempt.run_id
    )
    second = _claim(engine, registry, ActivityDispatch(attempt.run_id, 1, "flaky", 10))
    assert isinstance(second, Attempt) and second.attempt == 2
    assert record_outcome(engine, registry, second, run_attempt(second)).reason == "completed"
    changes = [
        (e.attributes["from_status"], e.attributes["to_status"])
        for e in get_history(engine, attempt.run_id)
        if e.event_type == ev.WORKFLOW_STATUS_CHANGED
    ]
    assert changes == [("RUNNING", "RETRYING_AFTER_ERROR"), ("RETRYING_AFTER_ERROR", "RUNNING")]


@pytest.mark.parametrize(
    ("how", "error_type"),
    [("non_retryable", "CardDeclined"), ("by_type", "PermissionError")],
)
def test_a_non_retryable_failure_is_final_at_the_first_attempt(
    engine: Engine, registry: Registry, how: str, error_type: str
) -> None:
    attempt = _claim_first(engine, registry, "refused", {"how": how})
    follow_up = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert follow_up.failure is not None and follow_up.failure["type"] == error_type
    assert follow_up.reason == "completed"  # no retry: the workflow went on at once
    assert _execution(engine, attempt.run_id).result == {"type": error_type, "attempts": 1}
    assert _types(engine, attempt.run_id).count(ev.ACTIVITY_TASK_STARTED) == 1


def test_a_workflow_task_with_nothing_to_do_takes_no_lock(
    engine: Engine, registry: Registry
) -> None:
    # A chord's callback after its members advanced the run inline, say: it must not
    # wait for (or take) the run's lock, nor read its history.
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    run_workflow_task(engine, registry, run_id)
    with engine.connect() as holder:
        holder.execute(text("SELECT 1 FROM runs WHERE run_id = :r FOR UPDATE"), {"r": run_id})
        with ThreadPoolExecutor(max_workers=1) as pool:
            redundant = pool.submit(run_workflow_task, engine, registry, run_id)
            assert redundant.result(timeout=10).reason == "nothing to do"
        holder.rollback()
