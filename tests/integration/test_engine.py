"""The engine's steps against a real Postgres, called directly (no broker, no worker)."""

from __future__ import annotations

import socket
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, cast, select, update
from sqlalchemy.dialects.postgresql import JSONB

from app.engine import events as ev
from app.engine.activity_tasks import (
    Attempt,
    Done,
    RetryLater,
    claim_attempt,
    execute_attempt,
    record_outcome,
)
from app.engine.executions import get_execution, get_history, start_execution
from app.engine.statuses import ExecutionStatus
from app.engine.sweeper import sweep
from app.engine.workflow_tasks import run_workflow_task
from app.storage.history import LockedActivity, lock_run_with_activity
from app.storage.schema import activities, events, runs
from app.workflows.registry import Registry


def _start(engine: Engine, registry: Registry, name: str, value: object) -> uuid.UUID:
    record, (dispatch,) = start_execution(
        engine,
        registry.workflow(name),
        execution_id=f"engine-{uuid.uuid4().hex}",
        input_value=value,
    )
    assert dispatch.run_id == record.run_id and not dispatch.activities
    return record.run_id


def _claim_first(engine: Engine, registry: Registry, values: list[int]) -> Attempt:
    """Start a sequential-sum run, schedule its first activity and claim it."""
    run_id = _start(engine, registry, "sequential-sum", {"values": values})
    run_workflow_task(engine, registry, run_id)
    claim = claim_attempt(engine, registry, run_id, 1)
    assert isinstance(claim, Attempt)
    return claim


def _types(engine: Engine, run_id: uuid.UUID) -> list[str]:
    return [e.event_type for e in get_history(engine, run_id)]


def test_a_run_advances_step_by_step_to_completion(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [4, 5]})
    for expected_total in (4, 9):
        (dispatch,) = run_workflow_task(engine, registry, run_id)
        (activity,) = dispatch.activities
        claim = claim_attempt(engine, registry, run_id, activity.seq)
        assert isinstance(claim, Attempt)
        succeeded, value = execute_attempt(claim)
        assert (succeeded, value) == (True, expected_total)
        assert record_outcome(engine, claim, succeeded, value) == Done("completed")
    assert run_workflow_task(engine, registry, run_id) == []
    history = get_history(engine, run_id)
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    assert history[-1].event_type == ev.WORKFLOW_EXECUTION_COMPLETED
    assert history[-1].attributes["result"] == {"type": "json", "value": {"total": 9}}


def test_a_redelivered_workflow_task_records_nothing(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    assert len(run_workflow_task(engine, registry, run_id)) == 1
    before = _types(engine, run_id)
    assert run_workflow_task(engine, registry, run_id) == []
    assert _types(engine, run_id) == before


def test_the_same_activity_message_twice_records_one_outcome(
    engine: Engine, registry: Registry
) -> None:
    first = _claim_first(engine, registry, [7])
    run_id = first.run_id
    assert claim_attempt(engine, registry, run_id, 1) == Done("attempt in progress elsewhere")
    succeeded, value = execute_attempt(first)
    assert record_outcome(engine, first, succeeded, value) == Done("completed")
    assert record_outcome(engine, first, succeeded, value).reason.startswith("outcome discarded")
    assert claim_attempt(engine, registry, run_id, 1) == Done("already completed")
    types = _types(engine, run_id)
    assert types.count(ev.ACTIVITY_TASK_STARTED) == 1
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 1


def test_an_attempt_whose_worker_died_is_failed_and_retried(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    run_workflow_task(engine, registry, run_id)
    assert isinstance(claim_attempt(engine, registry, run_id, 1), Attempt)
    dead_pid = _a_dead_pid()
    with engine.begin() as conn:
        conn.execute(
            update(activities)
            .where(activities.c.run_id == run_id)
            .values(lease_owner=f"{socket.gethostname()}:{dead_pid}")
        )
    outcome = claim_attempt(engine, registry, run_id, 1)
    assert isinstance(outcome, RetryLater) and outcome.countdown == 1.0
    history = get_history(engine, run_id)
    retrying = [e for e in history if e.event_type == ev.ACTIVITY_TASK_RETRYING]
    assert len(retrying) == 1
    assert retrying[0].attributes["attempt"] == 1
    assert retrying[0].attributes["failure"]["type"] == "WorkerLost"
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.RETRYING_AFTER_ERROR


def test_the_sweeper_restarts_a_run_whose_first_message_was_never_sent(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "sequential-sum", {"values": [1]})
    report = sweep(engine, stalled_after=timedelta(0))
    assert run_id in {d.run_id for d in report.dispatches}
    report = sweep(engine, stalled_after=timedelta(seconds=60))
    assert run_id not in {d.run_id for d in report.dispatches}


def test_the_sweeper_times_out_overdue_runs_and_abandons_their_activities(
    engine: Engine, registry: Registry
) -> None:
    claim = _claim_first(engine, registry, [1])
    run_id = claim.run_id
    with engine.begin() as conn:
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(deadline=runs.c.start_time))
    assert sweep(engine, stalled_after=timedelta(seconds=60)).timed_out >= 1
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.TIMED_OUT
    assert record.end_time is not None
    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value).reason.startswith("outcome discarded")
    types = _types(engine, run_id)
    assert types[-1] == ev.WORKFLOW_EXECUTION_TIMED_OUT
    assert ev.ACTIVITY_TASK_COMPLETED not in types


def _execution_of(engine: Engine, run_id: uuid.UUID) -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(select(runs.c.execution_id).where(runs.c.run_id == run_id)).scalar()
        )


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_replay_that_disagrees_with_history_fails_the_workflow_task_once(
    engine: Engine, registry: Registry
) -> None:
    claim = _claim_first(engine, registry, [1, 2])
    run_id = claim.run_id
    # Stand-in for a deployment whose code changed under a running execution.
    with engine.begin() as conn:
        conn.execute(
            update(events)
            .where(events.c.run_id == run_id, events.c.event_type == ev.ACTIVITY_TASK_SCHEDULED)
            .values(
                attributes=events.c.attributes.op("||")(cast({"activity_name": "square"}, JSONB))
            )
        )
    succeeded, value = execute_attempt(claim)
    record_outcome(engine, claim, succeeded, value)
    assert run_workflow_task(engine, registry, run_id) == []
    assert run_workflow_task(engine, registry, run_id) == []
    history = get_history(engine, run_id)
    failures = [e for e in history if e.event_type == ev.WORKFLOW_TASK_FAILED]
    assert len(failures) == 1
    assert failures[0].attributes["failure"]["type"] == "NonDeterminismError"
    assert "'add'" in failures[0].attributes["failure"]["message"]
    assert history[-1].event_type == ev.WORKFLOW_TASK_FAILED
    assert get_execution(engine, _execution_of(engine, run_id)).status is ExecutionStatus.RUNNING


def test_an_inline_workflow_task_that_breaks_keeps_the_outcome(
    engine: Engine, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = _claim_first(engine, registry, [1, 2])
    run_id = claim.run_id
    succeeded, value = execute_attempt(claim)

    def broken_advance(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the workflow task")

    monkeypatch.setattr("app.engine.activity_tasks.advance", broken_advance)
    outcome = record_outcome(engine, claim, succeeded, value, registry)
    assert outcome == Done("completed")  # not advanced: the chained workflow task will
    assert _types(engine, run_id)[-1] == ev.ACTIVITY_TASK_COMPLETED
    monkeypatch.undo()
    (dispatch,) = run_workflow_task(engine, registry, run_id)
    assert [a.seq for a in dispatch.activities] == [2]


def test_an_outcome_recorded_with_the_registry_advances_in_the_same_transaction(
    engine: Engine, registry: Registry
) -> None:
    claim = _claim_first(engine, registry, [5])
    run_id = claim.run_id
    succeeded, value = execute_attempt(claim)
    outcome = record_outcome(engine, claim, succeeded, value, registry)
    assert isinstance(outcome, Done) and outcome.advanced and outcome.dispatches == []
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.COMPLETED and record.result == {"total": 5}
    assert run_workflow_task(engine, registry, run_id) == []
    # The activity that closed the run completed; it was not abandoned by the closing.
    with engine.connect() as conn:
        states = conn.execute(select(activities.c.state).where(activities.c.run_id == run_id))
        assert list(states.scalars()) == ["COMPLETED"]


def test_an_expired_lease_is_lost_even_if_its_process_lives(
    engine: Engine, registry: Registry
) -> None:
    claim = _claim_first(engine, registry, [1])
    with engine.begin() as conn:
        conn.execute(
            update(activities)
            .where(activities.c.run_id == claim.run_id)
            .values(lease_expires_at=datetime(2000, 1, 1, tzinfo=UTC))  # the owner is us, alive
        )
    outcome = claim_attempt(engine, registry, claim.run_id, 1)
    assert isinstance(outcome, RetryLater)
    (retrying,) = [
        e for e in get_history(engine, claim.run_id) if e.event_type == ev.ACTIVITY_TASK_RETRYING
    ]
    assert retrying.attributes["failure"]["type"] == "StartToCloseTimeout"
    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value).reason.startswith("outcome discarded")


def test_activities_started_by_a_closing_workflow_are_abandoned(
    engine: Engine, registry: Registry
) -> None:
    run_id = _start(engine, registry, "fire-and-forget", None)
    assert run_workflow_task(engine, registry, run_id) == []
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.COMPLETED and record.result == "done"
    with engine.connect() as conn:
        states = conn.execute(select(activities.c.state).where(activities.c.run_id == run_id))
        assert list(states.scalars()) == ["ABANDONED"]
    report = sweep(engine, stalled_after=timedelta(0))
    assert run_id not in {d.run_id for d in report.dispatches}


def test_a_workflow_whose_constructor_raises_fails(engine: Engine, registry: Registry) -> None:
    run_id = _start(engine, registry, "unbuildable", None)
    run_workflow_task(engine, registry, run_id)
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.FAILED
    assert record.error == {"type": "RuntimeError", "message": "cannot build the workflow"}


def test_a_parallel_run_completes_when_each_outcome_reads_history_itself(
    engine: Engine, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With outcomes committing concurrently, the history read along with the lock is
    # often stale and dropped; the workflow task must still see the outcome it follows.
    run_id = _start(engine, registry, "fan-out-squares", {"values": [2, 3, 4]})
    (dispatch,) = run_workflow_task(engine, registry, run_id)
    claims = [claim_attempt(engine, registry, run_id, a.seq) for a in dispatch.activities]

    def lock_without_history(*args: Any, **kwargs: Any) -> LockedActivity:
        locked: LockedActivity = lock_run_with_activity(*args, **kwargs)
        return LockedActivity(locked.run, locked.activity, None)

    monkeypatch.setattr("app.engine.activity_tasks.lock_run_with_activity", lock_without_history)
    for claim in claims:
        assert isinstance(claim, Attempt)
        succeeded, value = execute_attempt(claim)
        outcome = record_outcome(engine, claim, succeeded, value, registry)
        assert isinstance(outcome, Done) and outcome.advanced
    record = get_execution(engine, _execution_of(engine, run_id))
    assert record.status is ExecutionStatus.COMPLETED
    assert record.result == {"squares": [4, 9, 16], "sum": 29}
