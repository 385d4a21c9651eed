"""Claim tickets: a just-scheduled activity's message carries what its first attempt's
claim would read from Postgres, so that claim is a Redis lease alone.

Against a real Postgres and a real Redis. A claim that must not touch Postgres is
given an engine whose server does not exist: reading it would fail the test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from app.devstack import free_port
from app.engine import events as ev
from app.engine.activity_tasks import (
    LEASE_GRACE,
    Attempt,
    Done,
    claim_attempt,
    execute_attempt,
    record_outcome,
    ticket_for,
)
from app.engine.dispatch import Dispatch
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


def _the_ticket(dispatches: list[Dispatch], *, issued_at: float | None = None) -> dict[str, Any]:
    (dispatch,) = dispatches
    (activity,) = dispatch.activities
    ticket = ticket_for(activity, issued_at=issued_at)
    assert ticket is not None
    return ticket


def _ticketed(
    engine: Engine, registry: Registry, name: str, value: object, *, age: float = 0.0
) -> tuple[uuid.UUID, dict[str, Any]]:
    """A run whose first activity was just scheduled, and the ticket its message
    carries, issued `age` seconds ago."""
    run_id, dispatches = first_activity_scheduled(engine, registry, name, value)
    return run_id, _the_ticket(dispatches, issued_at=time.time() - age)


def _time_out(engine: Engine, run_id: uuid.UUID) -> None:
    """Close the run, as its execution timeout does."""
    with engine.begin() as conn:
        run = lock_run(conn, run_id)
        assert run is not None
        time_out_run(conn, run)


def test_a_ticketed_first_attempt_is_claimed_without_postgres_and_recorded_as_usual(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3]})
    add = registry.activities["add"].start_to_close_timeout
    assert ticket["lease_seconds"] == (add + LEASE_GRACE).total_seconds()

    claim = claim_attempt(no_database, registry, run_id, 1, leases, ticket=ticket)

    assert isinstance(claim, Attempt) and claim.lease is not None
    assert (claim.attempt, claim.input) == (1, {"total": 0, "value": 3})
    assert claim.definition.name == "add"
    assert leases.client.exists(leases.key(run_id, 1, 1)) == 1  # the attempt is leased

    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value, None, leases) == Done("completed")
    history = list(get_history(engine, run_id))
    (started,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_STARTED]
    (completed,) = [e for e in history if e.event_type == ev.ACTIVITY_TASK_COMPLETED]
    assert started.attributes["attempt"] == completed.attributes["attempt"] == 1
    assert completed.attributes["result"]["value"] == 3


def test_a_second_message_with_the_same_ticket_leaves_the_attempt_alone(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3]})
    first = claim_attempt(no_database, registry, run_id, 1, leases, ticket=ticket)
    assert isinstance(first, Attempt)

    # A duplicate delivery (a publish sent again), while the attempt runs ...
    duplicate = claim_attempt(no_database, registry, run_id, 1, leases, ticket=ticket)
    assert duplicate == Done("attempt in progress elsewhere")
    # ... and once its outcome is in: the attempt's key outlives the ticket, and its
    # shortened lease sends the claim to Postgres.
    succeeded, value = execute_attempt(first)
    record_outcome(engine, first, succeeded, value, None, leases)
    assert claim_attempt(engine, registry, run_id, 1, leases, ticket=ticket) == Done(
        "already completed"
    )
    types = [e.event_type for e in get_history(engine, run_id)]
    assert types.count(ev.ACTIVITY_TASK_STARTED) == types.count(ev.ACTIVITY_TASK_COMPLETED) == 1


def test_a_ticket_for_an_attempt_claimed_through_postgres_is_not_used(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3]})
    assert isinstance(claim_attempt(engine, registry, run_id, 1, leases), Attempt)

    assert claim_attempt(no_database, registry, run_id, 1, leases, ticket=ticket) == Done(
        "attempt in progress elsewhere"
    )


def test_a_stale_ticket_is_ignored_and_the_claim_finds_the_closed_run_in_postgres(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, stale = _ticketed(
        engine, registry, "sequential-sum", {"values": [3]}, age=TICKET_SECONDS + 1
    )
    _time_out(engine, run_id)

    assert claim_attempt(engine, registry, run_id, 1, leases, ticket=stale) == Done("run closed")
    assert leases.client.exists(leases.key(run_id, 1, 1)) == 0


@pytest.mark.parametrize(
    "spoil",
    [
        lambda t: t.pop("input"),
        lambda t: t.update(issued_at="yesterday"),
        lambda t: t.update(activity_name="not-registered-here"),
    ],
    ids=["incomplete", "malformed", "unknown-activity"],
)
def test_a_ticket_that_cannot_be_used_sends_the_claim_to_postgres(
    engine: Engine, registry: Registry, leases: LeaseStore, spoil: Any
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3]})
    _time_out(engine, run_id)
    spoil(ticket)

    assert claim_attempt(engine, registry, run_id, 1, leases, ticket=ticket) == Done("run closed")


def test_an_attempt_started_by_ticket_after_its_run_closed_has_its_outcome_discarded(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3]})
    _time_out(engine, run_id)
    claim = claim_attempt(engine, registry, run_id, 1, leases, ticket=ticket)
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

    assert _the_ticket(small)["input"] == {"folder": "/tmp/held"}
    assert ticket_for(large[0].activities[0]) is None


def test_an_outcome_dispatches_the_next_activity_with_its_ticket(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, ticket = _ticketed(engine, registry, "sequential-sum", {"values": [3, 4]})
    first = claim_attempt(no_database, registry, run_id, 1, leases, ticket=ticket)
    assert isinstance(first, Attempt)
    succeeded, value = execute_attempt(first)

    outcome = record_outcome(engine, first, succeeded, value, registry, leases)

    assert isinstance(outcome, Done) and outcome.advanced
    assert [a.seq for d in outcome.dispatches for a in d.activities] == [2]
    second = claim_attempt(
        no_database, registry, run_id, 2, leases, ticket=_the_ticket(outcome.dispatches)
    )
    assert isinstance(second, Attempt)
    assert (second.attempt, second.input) == (1, {"total": 3, "value": 4})


def test_a_claim_without_its_ticket_reads_postgres(
    engine: Engine, no_database: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id, _ = _ticketed(engine, registry, "sequential-sum", {"values": [3]})

    with pytest.raises(Exception, match="connect"):
        claim_attempt(no_database, registry, run_id, 1, leases)
    claim = claim_attempt(engine, registry, run_id, 1, leases)

    assert isinstance(claim, Attempt) and claim.lease is not None
    assert claim.input == {"total": 0, "value": 3}
