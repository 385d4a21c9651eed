"""The Celery tasks. Each unpacks its message and calls the engine."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from sqlalchemy import Engine

from app.engine.activity_tasks import (
    Attempt,
    Done,
    RetryLater,
    claim_attempt,
    execute_attempt,
    record_outcome,
)
from app.engine.leases import get_lease_store
from app.engine.start_recorder import StartRecorder
from app.engine.sweeper import sweep
from app.engine.transient import TRANSIENT_ERRORS
from app.engine.workflow_tasks import run_workflow_task
from app.storage.db import get_engine
from workers.celery_app import (
    SWEEP_TASK,
    WORKFLOW_TASK,
    activity_task_name,
    app,
    registry,
    settings,
)
from workers.dispatch import dispatcher

# Backoffs longer than this are left to the sweeper instead of a broker countdown.
MAX_COUNTDOWN_SECONDS = 600.0


# A database, broker or lease store outage is transient: try again rather than drop
# the message.
RETRY_TRANSIENT: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": None,
}


@app.task(name=WORKFLOW_TASK, ignore_result=True, **RETRY_TRANSIENT)
def workflow_task(run_id: str) -> None:
    dispatcher.send(run_workflow_task(get_engine(), registry, uuid.UUID(run_id)))


@app.task(name=SWEEP_TASK, ignore_result=True, **RETRY_TRANSIENT)
def sweep_task() -> int:
    report = sweep(get_engine(), stalled_after=timedelta(seconds=settings.stalled_after_seconds))
    dispatcher.send(report.dispatches)
    return report.timed_out


start_recorder = StartRecorder(settings.record_started_after_seconds)


def _retry_later(task: Task[Any, Any], outcome: RetryLater) -> None:
    if outcome.countdown > MAX_COUNTDOWN_SECONDS:
        raise Ignore()
    raise task.retry(countdown=outcome.countdown, max_retries=None)


def run_attempt(engine: Engine, claim: Attempt, recorder: StartRecorder) -> tuple[bool, Any]:
    """Run the attempt under the start recorder's watch."""
    result: tuple[bool, Any] | None = None
    try:
        with recorder.watching(engine, claim):
            result = execute_attempt(claim)
    except SoftTimeLimitExceeded as exc:
        # Inside the activity it is caught as its failure; here it fell around it, most
        # likely while the recorder finished writing the start. A result is kept: that
        # write and the outcome's take the run's lock in turn, in either order.
        if result is None:
            result = (False, exc)
    return result


def run_activity_message(
    task: Task[Any, Any], run_id: str, seq: int, ticket: dict[str, Any] | None = None
) -> str:
    engine, leases = get_engine(), get_lease_store()
    # A retried message keeps its first delivery's keywords, ticket included; that
    # delivery almost always claimed the attempt, so Postgres decides.
    if task.request.retries:
        ticket = None
    claim = claim_attempt(engine, registry, uuid.UUID(run_id), seq, leases, ticket=ticket)
    if isinstance(claim, RetryLater):
        _retry_later(task, claim)
    if not isinstance(claim, Attempt):
        assert isinstance(claim, Done)
        return claim.reason
    succeeded, value = run_attempt(engine, claim, start_recorder)
    try:
        outcome = record_outcome(engine, claim, succeeded, value, registry, leases)
    except SoftTimeLimitExceeded as exc:
        # Out of time while writing the outcome: the attempt was let go, and the
        # message's retry records it lost and schedules the next one.
        raise task.retry(exc=exc, countdown=0, max_retries=None) from exc
    if isinstance(outcome, RetryLater):
        _retry_later(task, outcome)
    assert isinstance(outcome, Done)
    if outcome.advanced:
        # The workflow task already ran inline; the chain's own would find nothing to do.
        task.request.chain = None
        dispatcher.send(outcome.dispatches)
    return outcome.reason


def _register_activity_task(activity_name: str) -> None:
    @app.task(name=activity_task_name(activity_name), bind=True, **RETRY_TRANSIENT)
    def activity_task(
        self: Task[Any, Any], run_id: str, seq: int, ticket: dict[str, Any] | None = None
    ) -> str:
        return run_activity_message(self, run_id, seq, ticket)


for _name in registry.activities:
    _register_activity_task(_name)
