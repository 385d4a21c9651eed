"""How an activity message treats Celery's soft time limit around the attempt (no I/O)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine, create_engine

from app.engine.activity_tasks import Attempt
from app.engine.retry import RetryPolicy
from app.engine.start_recorder import StartRecorder
from app.workflows.registry import ActivityDefinition
from workers.tasks import run_attempt


class LimitWhenDone(StartRecorder):
    """The soft limit falls as the attempt ends, while the start is being written."""

    @contextmanager
    def watching(self, engine: Engine, attempt: Attempt) -> Iterator[None]:
        yield
        raise SoftTimeLimitExceeded()


class LimitBeforeStart(StartRecorder):
    @contextmanager
    def watching(self, engine: Engine, attempt: Attempt) -> Iterator[None]:
        raise SoftTimeLimitExceeded()
        yield


def double(value: int) -> int:
    return value * 2


def _attempt() -> Attempt:
    definition = ActivityDefinition("double", double, timedelta(seconds=5), RetryPolicy())
    return Attempt(uuid.uuid4(), "exec", 1, 1, definition, {"value": 21})


def _unused_engine() -> Engine:
    return create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_a_limit_that_falls_after_the_activity_returned_keeps_its_result() -> None:
    result: tuple[bool, Any] = run_attempt(_unused_engine(), _attempt(), LimitWhenDone(1.0))
    assert result == (True, 42)


def test_a_limit_that_falls_before_the_activity_ran_is_its_failure() -> None:
    succeeded, error = run_attempt(_unused_engine(), _attempt(), LimitBeforeStart(1.0))
    assert not succeeded and isinstance(error, SoftTimeLimitExceeded)
