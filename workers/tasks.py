"""The Celery tasks: each unpacks its message, calls the engine, and sends what follows."""

from __future__ import annotations

import uuid
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore

from app.engine.activities.claim import NotClaimed, claim
from app.engine.activities.heartbeat import Heartbeats
from app.engine.activities.outcome import record_outcome
from app.engine.activities.run import run_attempt
from app.engine.dispatch import FollowUp
from app.engine.search_keys import upsert_search_keys
from app.engine.task_events import record_task_event
from app.engine.workflow_tasks import run_workflow_task
from app.errors import DatabaseUnavailable
from app.messaging.broker import TIME_LIMIT_MARGIN_SECONDS, WORKFLOW_TASK, activity_task_name
from app.messaging.dispatcher import get_dispatcher
from app.storage.db import get_engine
from workers.celery_app import app, registry, settings

# Longer waits are left to the sweeper: a broker holds a message with a countdown in a
# worker's memory (Redis), where it is lost if the worker goes.
MAX_COUNTDOWN_SECONDS = 600.0

# Postgres out of reach before any user code ran (a claim, a workflow task): the
# message is delivered again, backing off, rather than dropped.
RETRY_WHILE_UNAVAILABLE: dict[str, Any] = {
    "autoretry_for": (DatabaseUnavailable,),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": None,
}


class AttemptFailed(Exception):
    """The activity attempt this task ran failed: the task fails too, so that Flower and
    Celery's counts show it as a failure (its next attempt, if any, is a task of its
    own). Declared in `throws`, Celery logs it without a traceback."""


def _again_in(task: Task[Any, Any], seconds: float) -> NoReturn:
    """Deliver this message again in `seconds` (it carries work not due yet)."""
    if seconds > MAX_COUNTDOWN_SECONDS:
        raise Ignore()
    raise task.retry(countdown=seconds, max_retries=None)


def _follow(task: Task[Any, Any], follow_up: FollowUp) -> str:
    get_dispatcher().send([follow_up])
    if follow_up.retry_in is not None:
        _again_in(task, follow_up.retry_in)
    if follow_up.failure is not None:
        failure = follow_up.failure
        raise AttemptFailed(f"{failure['type']}: {failure['message']} ({follow_up.reason})")
    return follow_up.reason


@app.task(
    name=WORKFLOW_TASK,
    bind=True,
    ignore_result=True,
    time_limit=round(settings.workflow_task_timeout_seconds + TIME_LIMIT_MARGIN_SECONDS),
    **RETRY_WHILE_UNAVAILABLE,
)
def workflow_task(self: Task[Any, Any], run_id: str) -> str:
    return _follow(self, run_workflow_task(get_engine(), registry, uuid.UUID(run_id)))


def run_activity_message(task: Task[Any, Any], run_id: str, seq: int, activity_name: str) -> str:
    engine = get_engine()
    task_id = task.request.id
    assert task_id is not None
    attempt = claim(
        engine, registry, uuid.UUID(run_id), seq, activity_name=activity_name, task_id=task_id
    )
    if isinstance(attempt, NotClaimed):
        if attempt.retry_in is not None:
            _again_in(task, attempt.retry_in)
        return attempt.reason
    heartbeats = Heartbeats(engine, attempt)
    try:
        outcome = run_attempt(
            attempt,
            heartbeats,
            lambda values, deleted: upsert_search_keys(
                engine, attempt.execution_id, values, deleted
            ),
            lambda event_type, attributes: record_task_event(
                engine, attempt.run_id, event_type, attributes
            ),
        )
    finally:
        heartbeats.close()
    follow_up = record_outcome(engine, registry, attempt, outcome)
    if follow_up.advanced or follow_up.failure is not None:
        # The workflow task already ran inline, or the next attempt went out with its
        # own: the chained one would find nothing to do.
        task.request.chain = None
    return _follow(task, follow_up)


def _register_activity_task(activity_name: str) -> None:
    @app.task(
        name=activity_task_name(activity_name),
        bind=True,
        # Its main process reports an attempt whose pool process died (requests.py).
        Request="workers.requests:ActivityRequest",
        throws=(AttemptFailed,),
        **RETRY_WHILE_UNAVAILABLE,
    )
    def activity_task(self: Task[Any, Any], run_id: str, seq: int, ticket: object = None) -> str:
        # `ticket`: messages from before claims went to Postgres carry one; Postgres
        # alone decides what runs, so it is ignored.
        return run_activity_message(self, run_id, seq, activity_name)


for _name in registry.activities:
    _register_activity_task(_name)
