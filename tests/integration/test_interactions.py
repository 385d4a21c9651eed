"""Signals, queries, updates, timers, cancel and terminate, through the engine's own
calls against a real Postgres (no broker, no worker: each step is taken by the test)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from app.engine import interactions
from app.engine.activities.claim import Attempt, claim
from app.engine.activities.heartbeat import AttemptCancelled, Heartbeats
from app.engine.activities.outcome import record_outcome
from app.engine.activities.run import run_attempt
from app.engine.dispatch import ActivityDispatch, FollowUp
from app.engine.executions import get_execution, get_history, insert_execution
from app.engine.sweeper import sweep
from app.engine.timers import fire_timers
from app.engine.workflow_tasks import run_workflow_task
from app.errors import ExecutionClosed, HandlerNotFound, QueryFailed
from app.model import events as ev
from app.model.statuses import ExecutionStatus
from app.storage.executions import ExecutionRecord
from app.workflows.registry import Registry
from tests.workflows import calls


def _start(engine: Engine, registry: Registry, name: str, value: object) -> ExecutionRecord:
    return insert_execution(
        engine, registry.workflow(name), execution_id=f"talk-{uuid.uuid4().hex}", input_value=value
    )


def _activities(follow_up: FollowUp) -> list[ActivityDispatch]:
    return [a for d in follow_up.dispatches for a in d.activities]


def _claim(engine: Engine, registry: Registry, activity: ActivityDispatch) -> Attempt:
    attempt = claim(
        engine,
        registry,
        activity.run_id,
        activity.seq,
        activity_name=activity.activity_name,
        task_id=uuid.uuid4().hex,
    )
    assert isinstance(attempt, Attempt)
    return attempt


def _run_activity(engine: Engine, registry: Registry, activity: ActivityDispatch) -> FollowUp:
    """Claim, run and record one activity (its workflow task runs inline)."""
    attempt = _claim(engine, registry, activity)
    return record_outcome(engine, registry, attempt, run_attempt(attempt))


def _events(engine: Engine, record: ExecutionRecord) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, e.attributes) for e in get_history(engine, record.run_id)]


def _types(engine: Engine, record: ExecutionRecord) -> list[str]:
    return [t for t, _ in _events(engine, record)]


def _timer_states(engine: Engine, record: ExecutionRecord) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT state FROM timers WHERE run_id = :r ORDER BY seq"), {"r": record.run_id}
        )
        return [row[0] for row in rows]


def _make_timers_due(engine: Engine, record: ExecutionRecord) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE timers SET fire_at = now() WHERE run_id = :r"), {"r": record.run_id}
        )


def _saga_waiting(
    engine: Engine, registry: Registry, folder: Path, wait_seconds: float = 60
) -> ExecutionRecord:
    """An approval saga that has reserved and now waits for its decision."""
    record = _start(
        engine,
        registry,
        "approval-saga",
        {"folder": str(folder), "item": "book", "wait_seconds": wait_seconds},
    )
    (reserve,) = _activities(run_workflow_task(engine, registry, record.run_id))
    assert _run_activity(engine, registry, reserve).reason == "waiting"
    assert _types(engine, record)[-1] == ev.TIMER_STARTED
    return record


def test_a_signal_wakes_the_workflow_and_its_timeout_timer_is_cancelled(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _saga_waiting(engine, registry, tmp_path)
    follow_up = interactions.signal(engine, record.execution_id, "decide", {"decision": "approve"})
    assert [d.run_id for d in follow_up.dispatches] == [record.run_id]
    assert run_workflow_task(engine, registry, record.run_id).reason == "completed"
    final = get_execution(engine, record.execution_id)
    assert final.status is ExecutionStatus.COMPLETED
    assert final.result == {"outcome": "approved", "notes": [], "limit": 100}
    types = _types(engine, record)
    signaled = types.index(ev.WORKFLOW_EXECUTION_SIGNALED)
    assert types[signaled + 1 :] == [
        ev.WORKFLOW_TASK_COMPLETED,
        ev.TIMER_CANCELED,
        ev.WORKFLOW_EXECUTION_COMPLETED,
    ]
    assert _timer_states(engine, record) == ["CANCELED"]
    assert calls(tmp_path, "calls-release") == 0


def test_a_timeout_that_fires_first_runs_the_compensation(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _saga_waiting(engine, registry, tmp_path)
    # Not due for a minute.
    assert record.run_id not in [d.run_id for f in fire_timers(engine) for d in f.dispatches]
    _make_timers_due(engine, record)
    fired = [d.run_id for f in fire_timers(engine) for d in f.dispatches]
    assert record.run_id in fired
    (release,) = _activities(run_workflow_task(engine, registry, record.run_id))
    assert release.activity_name == "release_reservation"
    assert _run_activity(engine, registry, release).reason == "completed"
    final = get_execution(engine, record.execution_id)
    assert final.result == {
        "outcome": "released reservation-book",
        "decision": "timed out",
        "notes": [],
    }
    timer_fired = next(a for t, a in _events(engine, record) if t == ev.TIMER_FIRED)
    assert timer_fired["seq"] == 2 and timer_fired["late_seconds"] >= 0
    assert _timer_states(engine, record) == ["FIRED"]
    assert calls(tmp_path, "calls-release") == 1


def test_a_rejection_compensates_and_signals_arrive_in_order(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _saga_waiting(engine, registry, tmp_path)
    interactions.signal(engine, record.execution_id, "note", {"text": "first"})
    interactions.signal(engine, record.execution_id, "note", {"text": "second"})
    assert run_workflow_task(engine, registry, record.run_id).reason == "waiting"
    interactions.signal(engine, record.execution_id, "decide", {"decision": "reject"})
    (release,) = _activities(run_workflow_task(engine, registry, record.run_id))
    _run_activity(engine, registry, release)
    final = get_execution(engine, record.execution_id)
    assert final.result == {
        "outcome": "released reservation-book",
        "decision": "reject",
        "notes": ["first", "second"],
    }


def test_queries_answer_from_the_recorded_state_open_or_closed(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _saga_waiting(engine, registry, tmp_path)
    status = interactions.query(engine, registry, record, "status", None)
    assert status == {"decision": None, "notes": [], "limit": 100}
    interactions.signal(engine, record.execution_id, "note", {"text": "hello"})
    run_workflow_task(engine, registry, record.run_id)
    before = _types(engine, record)
    status = interactions.query(engine, registry, record, "status", None)
    assert status == {"decision": None, "notes": ["hello"], "limit": 100}
    assert _types(engine, record) == before  # a query writes nothing
    interactions.signal(engine, record.execution_id, "decide", {"decision": "approve"})
    run_workflow_task(engine, registry, record.run_id)
    assert not get_execution(engine, record.execution_id).is_open
    status = interactions.query(engine, registry, record, "status", None)
    assert status == {"decision": "approve", "notes": ["hello"], "limit": 100}


def test_an_update_returns_its_result_and_a_rejected_one_leaves_the_run_going(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _saga_waiting(engine, registry, tmp_path)
    accepted = interactions.accept_update(engine, record.execution_id, "set-limit", {"limit": 7})
    pending = interactions.update_outcome(engine, accepted.run_id, accepted.update_id)
    assert pending.event_type is None and pending.status is ExecutionStatus.RUNNING
    run_workflow_task(engine, registry, record.run_id)
    done = interactions.update_outcome(engine, accepted.run_id, accepted.update_id)
    assert done.event_type == ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED
    assert done.attributes is not None
    assert done.attributes["result"]["value"] == {"old": 100, "new": 7}

    refused = interactions.accept_update(engine, record.execution_id, "set-limit", {"limit": 0})
    run_workflow_task(engine, registry, record.run_id)
    rejected = interactions.update_outcome(engine, refused.run_id, refused.update_id)
    assert rejected.event_type == ev.WORKFLOW_EXECUTION_UPDATE_REJECTED
    assert rejected.attributes is not None
    assert rejected.attributes["failure"] == {
        "type": "BadLimit",
        "message": "the limit must be positive",
    }
    assert get_execution(engine, record.execution_id).status is ExecutionStatus.RUNNING
    assert interactions.query(engine, registry, record, "status", None)["limit"] == 7


def test_an_update_may_await_an_activity(engine: Engine, registry: Registry) -> None:
    record = _start(engine, registry, "signal-counter", {"expected": 1})
    assert run_workflow_task(engine, registry, record.run_id).reason == "waiting"
    accepted = interactions.accept_update(
        engine, record.execution_id, "add-and-double", {"number": 21}
    )
    (add,) = _activities(run_workflow_task(engine, registry, record.run_id))
    assert _run_activity(engine, registry, add).reason == "completed"
    done = interactions.update_outcome(engine, accepted.run_id, accepted.update_id)
    assert done.attributes is not None and done.attributes["result"]["value"] == 42
    assert get_execution(engine, record.execution_id).result == [21]


def test_cancel_reaches_a_sleeping_workflow_which_cleans_up(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "sleeper", {"folder": str(tmp_path), "seconds": 3600})
    assert run_workflow_task(engine, registry, record.run_id).reason == "waiting"
    interactions.cancel(engine, record.execution_id)
    assert interactions.cancel(engine, record.execution_id).reason == "cancel already requested"
    (cleanup,) = _activities(run_workflow_task(engine, registry, record.run_id))
    assert _timer_states(engine, record) == ["CANCELED"]
    assert _run_activity(engine, registry, cleanup).reason == "canceled"
    final = get_execution(engine, record.execution_id)
    assert final.status is ExecutionStatus.CANCELED
    types = _types(engine, record)
    assert types.count(ev.WORKFLOW_EXECUTION_CANCEL_REQUESTED) == 1
    assert types[-1] == ev.WORKFLOW_EXECUTION_CANCELED
    assert calls(tmp_path, "calls-cleanup") == 1
    with pytest.raises(ExecutionClosed, match="CANCELED"):
        interactions.cancel(engine, record.execution_id)


def test_a_workflow_that_catches_the_cancellation_ends_as_it_says(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(
        engine, registry, "sleeper", {"folder": str(tmp_path), "seconds": 3600, "catch": True}
    )
    run_workflow_task(engine, registry, record.run_id)
    interactions.cancel(engine, record.execution_id)
    (cleanup,) = _activities(run_workflow_task(engine, registry, record.run_id))
    _run_activity(engine, registry, cleanup)
    final = get_execution(engine, record.execution_id)
    assert final.status is ExecutionStatus.COMPLETED
    assert final.result == {"cancelled": True, "cleaned": "cleanup"}


def test_cancel_stops_the_running_activity_and_its_late_result_is_discarded(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "held-for-cancel", {"folder": str(tmp_path)})
    (held,) = _activities(run_workflow_task(engine, registry, record.run_id))
    attempt = _claim(engine, registry, held)
    interactions.cancel(engine, record.execution_id)
    follow_up = run_workflow_task(engine, registry, record.run_id)
    assert follow_up.stop_task_ids == (attempt.task_id,)
    (cleanup,) = _activities(follow_up)
    assert cleanup.activity_name == "counted"
    (tmp_path / "release").touch()
    late = record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert "no longer current" in late.reason or "discarded" in late.reason
    _run_activity(engine, registry, cleanup)
    final = get_execution(engine, record.execution_id)
    assert final.result == {"cancelled": True, "cleaned": "cleanup"}
    types = _types(engine, record)
    assert ev.ACTIVITY_TASK_CANCEL_REQUESTED in types
    held_outcomes = [
        a for t, a in _events(engine, record) if t in ev.ACTIVITY_OUTCOMES and a["seq"] == 1
    ]
    assert held_outcomes == []


def test_terminate_ends_the_run_at_once_and_records_nothing_after(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "held-for-cancel", {"folder": str(tmp_path)})
    (held,) = _activities(run_workflow_task(engine, registry, record.run_id))
    attempt = _claim(engine, registry, held)
    follow_up = interactions.terminate(engine, record.execution_id)
    assert follow_up.stop_task_ids == (attempt.task_id,)
    final = get_execution(engine, record.execution_id)
    assert final.status is ExecutionStatus.TERMINATED and final.end_time is not None
    before = _types(engine, record)
    assert before[-1] == ev.WORKFLOW_EXECUTION_TERMINATED
    (tmp_path / "release").touch()
    record_outcome(engine, registry, attempt, run_attempt(attempt))
    assert _types(engine, record) == before
    for act in (
        lambda: interactions.terminate(engine, record.execution_id),
        lambda: interactions.cancel(engine, record.execution_id),
        lambda: interactions.signal(engine, record.execution_id, "decide", {}),
    ):
        with pytest.raises(ExecutionClosed, match="TERMINATED"):
            act()
    assert _types(engine, record) == before


def test_terminate_cancels_pending_timers(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "sleeper", {"folder": str(tmp_path), "seconds": 3600})
    run_workflow_task(engine, registry, record.run_id)
    interactions.terminate(engine, record.execution_id)
    assert _timer_states(engine, record) == ["CANCELED"]
    _make_timers_due(engine, record)
    fired = [d.run_id for f in fire_timers(engine) for d in f.dispatches]
    assert record.run_id not in fired
    assert _timer_states(engine, record) == ["CANCELED"]


def test_twenty_concurrent_signals_are_each_recorded_once_and_delivered(
    engine: Engine, registry: Registry
) -> None:
    record = _start(engine, registry, "signal-counter", {"expected": 20})
    run_workflow_task(engine, registry, record.run_id)

    def send(number: int) -> None:
        interactions.signal(engine, record.execution_id, "add", {"number": number})

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(send, range(20)))
    assert run_workflow_task(engine, registry, record.run_id).reason == "completed"
    signaled = [
        a["input"]["value"]["number"]
        for t, a in _events(engine, record)
        if t == ev.WORKFLOW_EXECUTION_SIGNALED
    ]
    assert sorted(signaled) == list(range(20))
    assert get_execution(engine, record.execution_id).result == signaled


def test_unknown_handlers_are_named(engine: Engine, registry: Registry) -> None:
    with pytest.raises(HandlerNotFound, match="'decide', 'note'"):
        interactions.find_handler(registry, "approval-saga", "signal", "approve")
    with pytest.raises(HandlerNotFound, match="none"):
        interactions.find_handler(registry, "sequential-sum", "query", "status")


def test_a_query_may_not_schedule_work(engine: Engine, registry: Registry) -> None:
    record = _start(engine, registry, "query-misuse", {})
    run_workflow_task(engine, registry, record.run_id)
    with pytest.raises(QueryFailed, match="may not call activity"):
        interactions.query(engine, registry, record, "sneaky", None)


def test_heartbeat_details_are_kept_in_the_outcome_event(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "calls-beating").write_text("earlier\n")  # not the hanging first call
    record = _start(engine, registry, "heartbeats", {"folder": str(tmp_path), "beats": 3})
    (beating,) = _activities(run_workflow_task(engine, registry, record.run_id))
    attempt = _claim(engine, registry, beating)
    heartbeats = Heartbeats(engine, attempt)
    heartbeats.every = 0  # write every beat
    outcome = run_attempt(attempt, heartbeats)
    assert record_outcome(engine, registry, attempt, outcome).reason == "completed"
    completed = next(a for t, a in _events(engine, record) if t == ev.ACTIVITY_TASK_COMPLETED)
    assert completed["last_heartbeat_details"] == {"type": "json", "value": [{"done": 3}]}


def test_an_attempt_whose_heartbeats_stop_is_failed_and_retried(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "heartbeats", {"folder": str(tmp_path), "beats": 1})
    (beating,) = _activities(run_workflow_task(engine, registry, record.run_id))
    attempt = _claim(engine, registry, beating)
    Heartbeats(engine, attempt)(("still here",))
    assert not sweep(engine, stalled_after_seconds=60)  # its heartbeat is fresh
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE activities SET heartbeat_deadline = now() WHERE run_id = :r"),
            {"r": record.run_id},
        )
    stopped = {t for f in sweep(engine, stalled_after_seconds=60) for t in f.stop_task_ids}
    assert stopped == {attempt.task_id}
    retrying = next(a for t, a in _events(engine, record) if t == ev.ACTIVITY_TASK_RETRYING)
    assert retrying["failure"]["type"] == "HeartbeatTimeout"
    assert retrying["last_heartbeat_details"]["value"] == ["still here"]
    with pytest.raises(AttemptCancelled):
        Heartbeats(engine, attempt)(())


def test_cancel_reaches_a_heartbeating_attempt_through_its_heartbeat(
    engine: Engine, registry: Registry, tmp_path: Path
) -> None:
    record = _start(engine, registry, "heartbeat-cancel", {"folder": str(tmp_path)})
    (beating,) = _activities(run_workflow_task(engine, registry, record.run_id))
    attempt = _claim(engine, registry, beating)
    heartbeats = Heartbeats(engine, attempt)
    heartbeats.every = 0  # write every beat
    heartbeats(())
    interactions.cancel(engine, record.execution_id)
    follow_up = run_workflow_task(engine, registry, record.run_id)
    # Not revoked: told by its next heartbeat, so that it can clean up.
    assert follow_up.stop_task_ids == ()
    assert get_execution(engine, record.execution_id).status is ExecutionStatus.CANCELED
    with pytest.raises(AttemptCancelled):
        heartbeats(())
