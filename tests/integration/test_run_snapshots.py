"""Run snapshots: a lone activity's ticket carries the run as its workflow task left it,
so recording the activity's success and running the next workflow task is one round
trip, with no read of the run first. Any change to the run since makes the guarded
write fail, and the outcome is recorded the usual way.

Against a real Postgres and a real Redis.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine

from app.engine import activity_tasks, workflow_tasks
from app.engine import events as ev
from app.engine.activity_tasks import (
    Attempt,
    Done,
    claim_attempt,
    execute_attempt,
    record_attempt_started,
    record_outcome,
    ticket_for,
)
from app.engine.dispatch import Dispatch
from app.engine.executions import get_execution, get_history, start_execution
from app.engine.leases import LeaseStore
from app.engine.statuses import ExecutionStatus
from app.engine.workflow_tasks import time_out_run
from app.storage.history import lock_run
from app.workflows.registry import Registry
from tests.support import first_activity_scheduled


def _message_ticket(dispatches: list[Dispatch], *, with_snapshot: bool = True) -> dict[str, Any]:
    """The ticket of the lone activity dispatched, as its message delivers it (JSON)."""
    (dispatch,) = dispatches
    (activity,) = dispatch.activities
    ticket = ticket_for(activity)
    assert ticket is not None and "run" in ticket
    if not with_snapshot:
        del ticket["run"]
    decoded: dict[str, Any] = json.loads(json.dumps(ticket))
    return decoded


def _run_to_the_end(
    engine: Engine, registry: Registry, leases: LeaseStore, value: object, *, with_snapshot: bool
) -> uuid.UUID:
    """Run a sequential-sum execution in this process, activity after activity, as the
    workers would: claim by ticket, run, record with the inline workflow task."""
    record, dispatches = start_execution(
        engine,
        registry.workflow("sequential-sum"),
        execution_id=f"snapshot-{uuid.uuid4().hex}",
        input_value=value,
        registry=registry,
    )
    while dispatches:
        ticket = _message_ticket(dispatches, with_snapshot=with_snapshot)
        (activity,) = dispatches[0].activities
        claim = claim_attempt(engine, registry, record.run_id, activity.seq, leases, ticket=ticket)
        assert isinstance(claim, Attempt)
        assert (claim.snapshot is not None) == with_snapshot
        succeeded, result = execute_attempt(claim)
        outcome = record_outcome(engine, claim, succeeded, result, registry, leases)
        assert isinstance(outcome, Done) and outcome.advanced, outcome
        dispatches = outcome.dispatches
    return record.run_id


# Attributes that name a run or a moment, and so differ between two equal runs.
_VARYING = {"task_id", "task_time"}


def _comparable(engine: Engine, run_id: uuid.UUID) -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (
            e.event_id,
            e.event_type,
            {k: v for k, v in e.attributes.items() if k not in _VARYING},
        )
        for e in get_history(engine, run_id)
    ]


def _refuse_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the outcome's path reads the run or its history."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the run was read")

    monkeypatch.setattr(activity_tasks, "lock_run_with_activity", refuse)
    monkeypatch.setattr(activity_tasks, "load_history", refuse)
    monkeypatch.setattr(workflow_tasks, "load_history", refuse)


def test_outcomes_recorded_from_snapshots_write_the_history_reads_would(
    engine: Engine, registry: Registry, leases: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    usual = _run_to_the_end(engine, registry, leases, {"values": [3, 4, 5]}, with_snapshot=False)
    _refuse_reads(monkeypatch)

    from_snapshots = _run_to_the_end(
        engine, registry, leases, {"values": [3, 4, 5]}, with_snapshot=True
    )

    assert _comparable(engine, from_snapshots) == _comparable(engine, usual)
    types = [event[1] for event in _comparable(engine, from_snapshots)]
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 3
    assert types[-1] == ev.WORKFLOW_EXECUTION_COMPLETED
    finished = get_execution(engine, get_history(engine, from_snapshots)[0].execution_id)
    assert (finished.status, finished.result) == (ExecutionStatus.COMPLETED, {"total": 12})


def _claimed_first_attempt(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> tuple[uuid.UUID, Attempt]:
    run_id, dispatches = first_activity_scheduled(
        engine, registry, "sequential-sum", {"values": [3, 4]}
    )
    claim = claim_attempt(engine, registry, run_id, 1, leases, ticket=_message_ticket(dispatches))
    assert isinstance(claim, Attempt) and claim.snapshot is not None
    return run_id, claim


def test_a_run_that_changed_since_its_snapshot_has_the_outcome_recorded_the_usual_way(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, claim = _claimed_first_attempt(engine, registry, leases)
    # A long attempt's start, written while it runs: one event more than the snapshot.
    assert record_attempt_started(engine, claim)

    succeeded, value = execute_attempt(claim)
    outcome = record_outcome(engine, claim, succeeded, value, registry, leases)

    assert isinstance(outcome, Done) and outcome.advanced
    assert [a.seq for d in outcome.dispatches for a in d.activities] == [2]
    types = [e.event_type for e in get_history(engine, run_id)]
    assert types.count(ev.ACTIVITY_TASK_STARTED) == types.count(ev.ACTIVITY_TASK_COMPLETED) == 1
    assert types.count(ev.ACTIVITY_TASK_SCHEDULED) == 2
    event_ids = [e.event_id for e in get_history(engine, run_id)]
    assert event_ids == list(range(1, len(event_ids) + 1))


def test_an_outcome_whose_run_closed_since_its_snapshot_is_discarded(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, claim = _claimed_first_attempt(engine, registry, leases)
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        time_out_run(conn, run)
    before = get_history(engine, run_id)

    succeeded, value = execute_attempt(claim)
    outcome = record_outcome(engine, claim, succeeded, value, registry, leases)

    assert outcome == Done("outcome discarded: the attempt is no longer current")
    assert get_history(engine, run_id) == before


def test_a_malformed_snapshot_is_ignored_and_the_ticket_still_claims(
    engine: Engine, registry: Registry, leases: LeaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    run_id, dispatches = first_activity_scheduled(
        engine, registry, "sequential-sum", {"values": [3]}
    )
    ticket = _message_ticket(dispatches)
    ticket["run"]["history"] = [["not", "an event"]]

    with caplog.at_level(logging.WARNING, logger=activity_tasks.__name__):
        claim = claim_attempt(engine, registry, run_id, 1, leases, ticket=ticket)

    assert isinstance(claim, Attempt) and claim.lease is not None and claim.snapshot is None
    assert "malformed run snapshot" in caplog.text
    succeeded, value = execute_attempt(claim)
    outcome = record_outcome(engine, claim, succeeded, value, registry, leases)
    assert isinstance(outcome, Done) and outcome.reason == "completed"


def test_activities_started_together_carry_no_snapshot(engine: Engine, registry: Registry) -> None:
    record, dispatches = start_execution(
        engine,
        registry.workflow("fan-out-squares"),
        execution_id=f"snapshot-{uuid.uuid4().hex}",
        input_value={"values": [1, 2, 3]},
        registry=registry,
    )

    (dispatch,) = dispatches
    tickets = [ticket_for(activity) for activity in dispatch.activities]
    assert len(tickets) == 3
    assert all(t is not None and "run" not in t for t in tickets)
    assert get_execution(engine, record.execution_id).status is ExecutionStatus.RUNNING
