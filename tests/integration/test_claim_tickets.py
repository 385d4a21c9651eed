"""Claim tickets: a just-scheduled activity's first attempt is claimed in Redis alone.

Against a real Postgres and a real Redis. A claim that must not touch Postgres is
given an engine whose server does not exist: reading it would fail the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine

from app.devstack import free_port
from app.engine import events as ev
from app.engine.activity_tasks import (
    Attempt,
    Done,
    claim_attempt,
    execute_attempt,
    record_outcome,
    tickets_for,
)
from app.engine.executions import get_history
from app.engine.leases import TICKET_MAX_INPUT_BYTES, TICKET_SECONDS, LeaseStore
from app.engine.workflow_tasks import time_out_run
from app.storage.db import make_engine
from app.storage.history import lock_run
from app.workflows.registry import Registry
from tests.support import first_activity_scheduled


@pytest.fixture(scope="module")
def no_database() -> Iterator[Engine]:
    """An engine whose every connection attempt fails."""
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    yield engine
    engine.dispose()


def _ticketed(
    engine: Engine, registry: Registry, leases: LeaseStore, name: str, value: object
) -> uuid.UUID:
    run_id, dispatches = first_activity_scheduled(engine, registry, name, value)
    leases.write_tickets(tickets_for(dispatches))
    return run_id


def _time_out(engine: Engine, run_id: uuid.UUID) -> None:
    """Close the run, as its execution timeout does."""
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        time_out_run(conn, run)


def test_a_ticketed_first_attempt_is_claimed_without_postgres_and_recorded_as_usual(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3]})
    ticket_key = leases.ticket_key(run_id, 1)
    assert 0 < leases.client.pttl(ticket_key) <= TICKET_SECONDS * 1000

    claim = claim_attempt(no_database, registry, run_id, 1, leases)

    assert isinstance(claim, Attempt) and claim.lease is not None
    assert (claim.attempt, claim.input) == (1, {"total": 0, "value": 3})
    assert claim.definition.name == "add"
    assert leases.client.exists(ticket_key) == 0  # a ticket is used once
    assert leases.client.exists(leases.key(run_id, 1, 1)) == 1  # the attempt is leased

    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value, None, leases) == Done("completed")
    history = list(get_history(engine, run_id))
    (started,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_STARTED]
    (completed,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_COMPLETED]
    assert started.attributes["attempt"] == completed.attributes["attempt"] == 1
    assert completed.attributes["result"]["value"] == 3


def test_a_second_message_for_a_ticketed_attempt_reads_postgres_and_leaves_it_alone(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3]})
    assert isinstance(claim_attempt(engine, registry, run_id, 1, leases), Attempt)

    assert claim_attempt(engine, registry, run_id, 1, leases) == Done(
        "attempt in progress elsewhere"
    )


def test_a_ticket_for_an_attempt_leased_already_is_not_used(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, dispatches = first_activity_scheduled(
        engine, registry, "sequential-sum", {"values": [3]}
    )
    first = claim_attempt(engine, registry, run_id, 1, leases)  # through Postgres
    assert isinstance(first, Attempt)
    leases.write_tickets(tickets_for(dispatches))

    assert leases.claim_by_ticket(run_id, 1, owner="someone else") is None
    assert claim_attempt(engine, registry, run_id, 1, leases) == Done(
        "attempt in progress elsewhere"
    )


def test_without_its_ticket_a_claim_reads_postgres_and_finds_a_closed_run(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3]})
    _time_out(engine, run_id)
    leases.client.delete(leases.ticket_key(run_id, 1))  # as when it expires

    assert claim_attempt(engine, registry, run_id, 1, leases) == Done("run closed")


def test_an_attempt_started_by_ticket_after_its_run_closed_has_its_outcome_discarded(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3]})
    _time_out(engine, run_id)
    claim = claim_attempt(engine, registry, run_id, 1, leases)
    assert isinstance(claim, Attempt)  # within the ticket's seconds, as Temporal's race

    succeeded, value = execute_attempt(claim)
    outcome = record_outcome(engine, claim, succeeded, value, registry, leases)

    assert outcome == Done("outcome discarded: the attempt is no longer current")
    types = [e.event_type for e in get_history(engine, run_id)]
    assert ev.ACTIVITY_TASK_STARTED not in types and ev.ACTIVITY_TASK_COMPLETED not in types
    assert types[-1] == ev.WORKFLOW_EXECUTION_TIMED_OUT


def test_an_activity_with_a_large_input_gets_no_ticket(engine: Engine, registry: Registry) -> None:
    _, small = first_activity_scheduled(engine, registry, "held", {"folder": "/tmp/held"})
    _, large = first_activity_scheduled(
        engine, registry, "held", {"folder": "x" * TICKET_MAX_INPUT_BYTES}
    )

    assert len(tickets_for(small)) == 1
    assert tickets_for(large) == []


def test_an_outcome_leaves_the_ticket_of_the_activity_its_workflow_task_schedules(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3, 4]})
    first = claim_attempt(no_database, registry, run_id, 1, leases)
    assert isinstance(first, Attempt)
    succeeded, value = execute_attempt(first)

    outcome = record_outcome(engine, first, succeeded, value, registry, leases)

    assert isinstance(outcome, Done) and outcome.advanced
    (dispatch,) = outcome.dispatches
    (following,) = dispatch.activities
    assert (following.seq, following.ticket) == (2, None)  # written with the commit
    second = claim_attempt(no_database, registry, run_id, 2, leases)
    assert isinstance(second, Attempt)
    assert (second.attempt, second.input) == (1, {"total": 3, "value": 4})


def test_an_outcome_is_recorded_when_the_tickets_cannot_be_written(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3, 4]})
    first = claim_attempt(engine, registry, run_id, 1, leases)
    assert isinstance(first, Attempt)
    succeeded, value = execute_attempt(first)
    unreachable = LeaseStore(redis.Redis(port=free_port(), socket_connect_timeout=1))

    outcome = record_outcome(engine, first, succeeded, value, registry, unreachable)

    assert isinstance(outcome, Done) and outcome.advanced
    types = [e.event_type for e in get_history(engine, run_id)]
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 1
    assert types.count(ev.ACTIVITY_TASK_SCHEDULED) == 2
    second = claim_attempt(engine, registry, run_id, 2, leases)  # through Postgres
    assert isinstance(second, Attempt) and second.input == {"total": 3, "value": 4}


def test_a_claim_told_to_skip_tickets_reads_postgres_and_leaves_the_ticket(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _ticketed(engine, registry, leases, "sequential-sum", {"values": [3]})

    claim = claim_attempt(engine, registry, run_id, 1, leases, ticketed=False)

    assert isinstance(claim, Attempt) and claim.lease is not None
    assert claim.input == {"total": 0, "value": 3}
    assert leases.client.exists(leases.ticket_key(run_id, 1)) == 1
    # The attempt is leased all the same: the ticket cannot start it a second time.
    assert leases.claim_by_ticket(run_id, 1, owner="someone else") is None
