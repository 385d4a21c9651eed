"""Attempts claimed with a Redis lease, against a real Postgres and a real Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, select

from app.devstack import free_port
from app.engine import events as ev
from app.engine.activity_tasks import (
    Attempt,
    Done,
    RetryLater,
    _record_outcome,
    claim_attempt,
    execute_attempt,
    record_attempt_started,
    record_outcome,
)
from app.engine.executions import get_history
from app.engine.leases import KEY_RETENTION_SECONDS, Lease, LeaseStore, Taken
from app.engine.replay import HistoryEvent
from app.engine.start_recorder import StartRecorder
from app.engine.transient import TRANSIENT_ERRORS
from app.storage.db import make_engine
from app.storage.schema import activities
from app.workflows.registry import Registry
from tests.support import (
    ADMIN_DATABASE_URL,
    engine_named,
    first_activity_scheduled,
    terminate_backends,
    wait_until,
)


def _scheduled(engine: Engine, registry: Registry, name: str, value: object) -> uuid.UUID:
    run_id, _ = first_activity_scheduled(engine, registry, name, value)
    return run_id


def _leased(engine: Engine, registry: Registry, leases: LeaseStore, run_id: uuid.UUID) -> Attempt:
    claim = claim_attempt(engine, registry, run_id, 1, leases)
    assert isinstance(claim, Attempt) and claim.lease is not None
    return claim


def _claim_when_due(
    engine: Engine, registry: Registry, leases: LeaseStore | None, run_id: uuid.UUID
) -> Attempt:
    """Claim activity 1 once its backoff is over."""

    def due() -> Attempt | None:
        claim = claim_attempt(engine, registry, run_id, 1, leases)
        return claim if isinstance(claim, Attempt) else None

    return wait_until(due, timeout=10, what="the next attempt to be due")


def _lost_then_retried(
    engine: Engine, registry: Registry, leases: LeaseStore | None, run_id: uuid.UUID
) -> Attempt:
    """Attempt 1's message returns: it records the attempt lost; attempt 2 is claimed."""
    assert isinstance(claim_attempt(engine, registry, run_id, 1, leases), RetryLater)
    (retrying,) = _of_type(_history(engine, run_id), ev.ACTIVITY_TASK_RETRYING)
    assert retrying.attributes["failure"]["type"] == "WorkerLost"
    second = _claim_when_due(engine, registry, leases, run_id)
    assert second.attempt == 2
    return second


def _failed_first_attempt(
    engine: Engine, registry: Registry, leases: LeaseStore, tmp_path: Path
) -> tuple[uuid.UUID, Attempt, Any]:
    """A run whose activity's first attempt has run and failed (not yet recorded)."""
    run_id = _scheduled(engine, registry, "flaky", {"folder": str(tmp_path), "failures": 1})
    claim = _leased(engine, registry, leases, run_id)
    succeeded, error = execute_attempt(claim)
    assert not succeeded
    return run_id, claim, error


def _history(engine: Engine, run_id: uuid.UUID) -> list[HistoryEvent]:
    return list(get_history(engine, run_id))


def _of_type(history: list[HistoryEvent], event_type: str) -> list[HistoryEvent]:
    return [e for e in history if e.event_type == event_type]


def _activity_state(engine: Engine, run_id: uuid.UUID) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            select(activities.c.state, activities.c.attempt).where(
                activities.c.run_id == run_id, activities.c.seq == 1
            )
        ).one()
    return row.state, row.attempt


def _event_timestamps(engine: Engine, run_id: uuid.UUID) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT event_type, event_timestamp FROM events WHERE run_id = %s", (run_id,)
        )
        return {row.event_type: row.event_timestamp for row in rows}


def test_a_leased_claim_writes_nothing_until_the_outcome_records_the_start_with_it(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [3]})
    before = _history(engine, run_id)
    claim = _leased(engine, registry, leases, run_id)
    assert _history(engine, run_id) == before
    assert _activity_state(engine, run_id) == ("SCHEDULED", 1)

    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value, None, leases) == Done("completed")
    history = _history(engine, run_id)
    assert [e.event_type for e in history[len(before) :]] == [
        ev.ACTIVITY_TASK_STARTED,
        ev.ACTIVITY_TASK_COMPLETED,
    ]
    (started,) = _of_type(history, ev.ACTIVITY_TASK_STARTED)
    assert started.attributes["attempt"] == 1
    assert started.attributes["input"] == {"type": "json", "value": {"total": 0, "value": 3}}
    assert claim.lease is not None
    timestamps = _event_timestamps(engine, run_id)
    # The start is when the attempt began, not when it was written.
    assert timestamps[ev.ACTIVITY_TASK_STARTED] == claim.lease.started_ns
    assert timestamps[ev.ACTIVITY_TASK_STARTED] < timestamps[ev.ACTIVITY_TASK_COMPLETED]
    assert _activity_state(engine, run_id) == ("COMPLETED", 1)
    # Its key is shortened with the next claim this process makes.
    key = leases.key(run_id, 1, 1)
    assert leases.client.pttl(key) > 60_000
    leases.acquire(uuid.uuid4(), 1, 1, owner="next", lease_seconds=5)
    assert 0 < leases.client.pttl(key) <= 60_000


def test_a_second_message_for_a_leased_attempt_leaves_it_alone(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [7]})
    claim = _leased(engine, registry, leases, run_id)
    duplicate = claim_attempt(engine, registry, run_id, 1, leases)
    assert duplicate == Done("attempt in progress elsewhere")

    succeeded, value = execute_attempt(claim)
    assert record_outcome(engine, claim, succeeded, value, None, leases) == Done("completed")
    again = record_outcome(engine, claim, succeeded, value, None, leases)
    assert again.reason.startswith("outcome discarded")
    assert claim_attempt(engine, registry, run_id, 1, leases) == Done("already completed")
    types = [e.event_type for e in _history(engine, run_id)]
    assert types.count(ev.ACTIVITY_TASK_STARTED) == 1
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 1


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _rewrite_lease(leases: LeaseStore, run_id: uuid.UUID, **changes: object) -> None:
    key = leases.key(run_id, 1, 1)
    raw = leases.client.get(key)
    assert raw is not None
    leases.client.set(key, json.dumps({**json.loads(raw), **changes}), keepttl=True)


def _run_out(leases: LeaseStore, run_id: uuid.UUID) -> None:
    """Leave the key of attempt 1 less time to live than a key outlives its lease."""
    assert leases.client.pexpire(leases.key(run_id, 1, 1), KEY_RETENTION_SECONDS * 1000 - 1)


def test_a_lease_whose_worker_died_is_recorded_as_a_started_and_lost_attempt(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [1]})
    lost = _leased(engine, registry, leases, run_id)
    _rewrite_lease(leases, run_id, owner=f"{socket.gethostname()}:{_a_dead_pid()}")

    outcome = claim_attempt(engine, registry, run_id, 1, leases)
    assert isinstance(outcome, RetryLater) and outcome.countdown == 1.0
    history = _history(engine, run_id)
    (started,) = _of_type(history, ev.ACTIVITY_TASK_STARTED)
    (retrying,) = _of_type(history, ev.ACTIVITY_TASK_RETRYING)
    assert started.event_id + 1 == retrying.event_id
    assert retrying.attributes["attempt"] == 1
    assert retrying.attributes["failure"]["type"] == "WorkerLost"
    assert _activity_state(engine, run_id) == ("BACKING_OFF", 2)

    # The lost attempt's late outcome is not recorded; the next attempt is leased anew.
    succeeded, value = execute_attempt(lost)
    late = record_outcome(engine, lost, succeeded, value, None, leases)
    assert late.reason.startswith("outcome discarded")
    assert _claim_when_due(engine, registry, leases, run_id).attempt == 2


def test_an_expired_lease_is_a_timeout_even_if_its_worker_lives(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [1]})
    _leased(engine, registry, leases, run_id)  # the owner is this process, alive
    _run_out(leases, run_id)
    assert isinstance(claim_attempt(engine, registry, run_id, 1, leases), RetryLater)
    (retrying,) = _of_type(_history(engine, run_id), ev.ACTIVITY_TASK_RETRYING)
    assert retrying.attributes["failure"]["type"] == "StartToCloseTimeout"


def test_a_long_attempt_shows_as_started_while_it_runs_and_is_started_once(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [2]})
    claim = _leased(engine, registry, leases, run_id)

    def started_in_history() -> bool:
        return bool(_of_type(_history(engine, run_id), ev.ACTIVITY_TASK_STARTED))

    with StartRecorder(delay=0.0).watching(engine, claim):
        # Stands in for a slow activity: it is still running when the timer fires.
        wait_until(started_in_history, timeout=10, what="the start in history")
        succeeded, value = execute_attempt(claim)
    assert _activity_state(engine, run_id) == ("STARTED", 1)
    assert claim_attempt(engine, registry, run_id, 1, leases) == Done(
        "attempt in progress elsewhere"
    )
    assert record_outcome(engine, claim, succeeded, value, None, leases) == Done("completed")
    types = [e.event_type for e in _history(engine, run_id)]
    assert types.count(ev.ACTIVITY_TASK_STARTED) == 1
    assert types.count(ev.ACTIVITY_TASK_COMPLETED) == 1
    assert record_attempt_started(engine, claim) is False


def test_a_short_attempt_cancels_its_start_timer(
    engine: Engine, registry: Registry, leases: LeaseStore
) -> None:
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [2]})
    claim = _leased(engine, registry, leases, run_id)
    with StartRecorder(delay=30.0).watching(engine, claim):
        succeeded, value = execute_attempt(claim)
    assert not _of_type(_history(engine, run_id), ev.ACTIVITY_TASK_STARTED)
    outcome = record_outcome(engine, claim, succeeded, value, registry, leases)
    assert isinstance(outcome, Done) and outcome.advanced
    assert len(_of_type(_history(engine, run_id), ev.ACTIVITY_TASK_STARTED)) == 1


def test_a_failed_leased_attempt_records_its_start_then_the_retry(
    engine: Engine, registry: Registry, leases: LeaseStore, tmp_path: Path
) -> None:
    run_id, claim, error = _failed_first_attempt(engine, registry, leases, tmp_path)
    outcome = record_outcome(engine, claim, False, error, registry, leases)
    assert isinstance(outcome, RetryLater)
    types = [e.event_type for e in _history(engine, run_id)]
    assert types[-3:] == [
        ev.ACTIVITY_TASK_STARTED,
        ev.ACTIVITY_TASK_RETRYING,
        ev.WORKFLOW_STATUS_CHANGED,
    ]
    assert _activity_state(engine, run_id) == ("BACKING_OFF", 2)
    second = _claim_when_due(engine, registry, leases, run_id)
    assert second.attempt == 2
    succeeded, value = execute_attempt(second)
    assert record_outcome(engine, second, succeeded, value, registry, leases).reason == "completed"
    started = _of_type(_history(engine, run_id), ev.ACTIVITY_TASK_STARTED)
    assert [e.attributes["attempt"] for e in started] == [1, 2]


@pytest.mark.parametrize("leased", [True, False], ids=["redis-lease", "postgres-claim"])
def test_an_outcome_write_that_meets_a_broken_connection_is_made_again(
    database_url: str, registry: Registry, leases: LeaseStore, leased: bool
) -> None:
    store = leases if leased else None
    name = f"restarted-{uuid.uuid4().hex[:8]}"
    engine = engine_named(database_url, name)
    try:
        run_id = _scheduled(engine, registry, "sequential-sum", {"values": [6]})
        claim = claim_attempt(engine, registry, run_id, 1, store)
        assert isinstance(claim, Attempt)
        succeeded, value = execute_attempt(claim)
        terminate_backends(name)  # every pooled connection, the write's among them
        outcome = record_outcome(engine, claim, succeeded, value, None, store)
        assert outcome == Done("completed")
        assert _activity_state(engine, run_id) == ("COMPLETED", 1)
        assert len(_of_type(_history(engine, run_id), ev.ACTIVITY_TASK_COMPLETED)) == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("leased", "elsewhere"),
    [(True, False), (True, True), (False, False)],
    ids=["redis-lease", "redis-lease-another-process", "postgres-claim"],
)
def test_an_attempt_whose_outcome_could_not_be_written_is_lost_when_its_message_returns(
    engine: Engine,
    registry: Registry,
    leases: LeaseStore,
    leased: bool,
    elsewhere: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not "in progress elsewhere" until its lease runs out: the process holding the
    # lease lets the attempt go, and says so in Redis for the others.
    monkeypatch.setattr("app.engine.activity_tasks.OUTCOME_WRITE_BACKOFFS", (0.01, 0.01))
    store = leases if leased else None
    run_id = _scheduled(engine, registry, "sequential-sum", {"values": [6]})
    claim = claim_attempt(engine, registry, run_id, 1, store)
    assert isinstance(claim, Attempt)
    succeeded, value = execute_attempt(claim)
    down = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/down")
    try:
        with pytest.raises(TRANSIENT_ERRORS):
            record_outcome(down, claim, succeeded, value, None, store)
    finally:
        down.dispose()
    if elsewhere:
        # Another worker process knows nothing of what this one let go.
        monkeypatch.setattr("app.engine.activity_tasks._let_go", set())

    second = _lost_then_retried(engine, registry, store, run_id)
    succeeded, value = execute_attempt(second)
    assert record_outcome(engine, second, succeeded, value, None, store) == Done("completed")


def test_a_failure_whose_commit_reply_was_lost_still_retries_its_message(
    engine: Engine, registry: Registry, leases: LeaseStore, tmp_path: Path
) -> None:
    run_id, claim, error = _failed_first_attempt(engine, registry, leases, tmp_path)
    first = record_outcome(engine, claim, False, error, None, leases)
    assert isinstance(first, RetryLater)
    # What the try after a lost COMMIT reply sees: the failure is already recorded.
    again = _record_outcome(engine, claim, False, error, None, again=True)
    assert isinstance(again, RetryLater) and again.countdown <= first.countdown
    assert len(_of_type(_history(engine, run_id), ev.ACTIVITY_TASK_RETRYING)) == 1


def test_a_lease_is_a_redis_key_per_attempt(leases: LeaseStore) -> None:
    run_id = uuid.uuid4()
    first = leases.acquire(run_id, 1, 1, owner="host:1", lease_seconds=5)
    assert isinstance(first, Lease)
    taken = leases.acquire(run_id, 1, 1, owner="host:2", lease_seconds=5)
    assert taken == Taken(first, expired=False)
    assert isinstance(leases.acquire(run_id, 1, 2, owner="host:2", lease_seconds=5), Lease)
    assert leases.client.pttl(leases.key(run_id, 1, 1)) > 3600_000


def test_a_lease_runs_out_by_the_redis_clock(leases: LeaseStore) -> None:
    # The holder's own idea of the time is not asked: its clock may be wrong.
    run_id = uuid.uuid4()
    skewed = leases.acquire(run_id, 2, 1, owner="host:1", lease_seconds=60)
    assert isinstance(skewed, Lease)
    key = leases.key(run_id, 2, 1)
    an_hour_ago_ns = skewed.started_ns - 3600 * 10**9
    value = json.dumps({**json.loads(leases.client.get(key) or "{}"), "started_ns": an_hour_ago_ns})
    leases.client.set(key, value, keepttl=True)
    taken = leases.acquire(run_id, 2, 1, owner="host:2", lease_seconds=60)
    assert isinstance(taken, Taken) and not taken.expired

    first = leases.acquire(run_id, 1, 1, owner="host:1", lease_seconds=0.2)
    assert isinstance(first, Lease)

    def ran_out() -> bool:
        taken = leases.acquire(run_id, 1, 1, owner="host:2", lease_seconds=5)
        assert isinstance(taken, Taken) and taken.holder == first
        return taken.expired

    wait_until(ran_out, timeout=10, what="the lease to run out")


def test_a_redis_that_stops_answering_fails_the_claim_instead_of_hanging_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.engine.leases.SOCKET_TIMEOUT_SECONDS", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never replies
        store = LeaseStore.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        with pytest.raises(TRANSIENT_ERRORS):
            store.acquire(uuid.uuid4(), 1, 1, owner="host:1", lease_seconds=5)


class _SoftTimeLimit:
    """Raise Celery's SoftTimeLimitExceeded in this thread as billiard does: a signal
    (SIGUSR1) whose handler raises it wherever the code is, here while it waits."""

    def __init__(self, after_seconds: float) -> None:
        self.after_seconds = after_seconds

    def __enter__(self) -> None:
        def raise_limit(signum: int, frame: object) -> None:
            raise SoftTimeLimitExceeded()

        self.previous = signal.signal(signal.SIGUSR1, raise_limit)
        self.timer = threading.Timer(self.after_seconds, os.kill, (os.getpid(), signal.SIGUSR1))
        self.timer.start()

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        signal.signal(signal.SIGUSR1, self.previous)


@contextmanager
def _held(plain_url: str, *statements: str) -> Iterator[threading.Event]:
    """A transaction of another client holding what `statements` take until the block
    ends, or 15 s on (so that a write waiting for it ends even if the code under
    test waits too); the event is set once it let go."""
    blocker = psycopg.connect(plain_url)
    released = threading.Event()

    def release() -> None:
        released.set()
        blocker.rollback()

    for statement in statements:
        blocker.execute(statement)
    safety = threading.Timer(15.0, release)
    safety.start()
    try:
        yield released
    finally:
        safety.cancel()
        blocker.rollback()
        blocker.close()


def _open_transactions(application_name: str) -> list[str]:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s AND state <> 'idle'",
            (application_name,),
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("waiting_for", ["the run's lock", "its write"])
def test_a_time_limit_while_an_outcome_waits_lets_the_attempt_go_and_writes_nothing(
    database_url: str, registry: Registry, leases: LeaseStore, waiting_for: str
) -> None:
    name = f"interrupted-{uuid.uuid4().hex[:8]}"
    engine = engine_named(database_url, name)
    plain_url = database_url.replace("+psycopg", "")
    gate = f"chainline_test_gate_{uuid.uuid4().hex[:8]}"
    try:
        run_id = _scheduled(engine, registry, "sequential-sum", {"values": [4, 5]})
        claim = _leased(engine, registry, leases, run_id)
        succeeded, value = execute_attempt(claim)
        if waiting_for == "the run's lock":
            taken = [f"SELECT 1 FROM runs WHERE run_id = '{run_id}' FOR UPDATE"]
        else:
            # Every event insert waits at a gate the other client holds closed.
            with psycopg.connect(plain_url, autocommit=True) as c:
                c.execute(
                    f"CREATE FUNCTION {gate}() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$"
                )
                c.execute(
                    f"CREATE TRIGGER {gate} BEFORE INSERT ON events"
                    f" FOR EACH ROW EXECUTE FUNCTION {gate}()"
                )
            taken = ["SELECT pg_advisory_xact_lock(4242)"]

        with _held(plain_url, *taken) as released, _SoftTimeLimit(0.3):
            with pytest.raises(SoftTimeLimitExceeded):
                record_outcome(engine, claim, succeeded, value, registry, leases)
            # Out before the other client let go: nothing waited for it.
            assert not released.is_set()

        assert _open_transactions(name) == []
        # Cancelled, not committed once the other client let go.
        assert _activity_state(engine, run_id) == ("SCHEDULED", 1)
        history = _history(engine, run_id)
        assert _of_type(history, ev.ACTIVITY_TASK_COMPLETED) == []
        assert _of_type(history, ev.ACTIVITY_TASK_STARTED) == []
        # Let go: the message's retry records the attempt lost at once.
        second = _lost_then_retried(engine, registry, leases, run_id)
        succeeded, value = execute_attempt(second)
        outcome = record_outcome(engine, second, succeeded, value, registry, leases)
        assert isinstance(outcome, Done) and outcome.advanced
    finally:
        with psycopg.connect(plain_url, autocommit=True) as c:
            c.execute(f"DROP TRIGGER IF EXISTS {gate} ON events")
            c.execute(f"DROP FUNCTION IF EXISTS {gate}()")
        engine.dispose()
