"""Waiting for an execution to close, woken by a real Postgres NOTIFY."""

from __future__ import annotations

import time
import uuid

import psycopg

from app.api.waiting import RECHECK_SECONDS, ClosedListener
from app.storage.history import CLOSED_CHANNEL


def _notify_closed(dsn: str, execution_id: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CLOSED_CHANNEL, execution_id))


def test_a_registered_waiter_is_woken_by_the_notification_without_reading(
    database_url: str,
) -> None:
    listener = ClosedListener(database_url)
    execution_id = uuid.uuid4().hex
    reads: list[str] = []

    with listener.watching(execution_id) as closing:
        _notify_closed(database_url, uuid.uuid4().hex)  # another execution's
        _notify_closed(database_url, execution_id)
        started = time.monotonic()
        assert closing.wait(30, lambda: reads.append("read") is not None)

    assert time.monotonic() - started < RECHECK_SECONDS
    assert reads == []


def test_without_a_notification_the_re_check_finds_the_execution_closed(
    database_url: str,
) -> None:
    listener = ClosedListener(database_url)
    answers = iter([False, True])

    with listener.watching(uuid.uuid4().hex) as closing:
        started = time.monotonic()
        assert closing.wait(30, lambda: next(answers))

    assert RECHECK_SECONDS * 2 <= time.monotonic() - started < 30


def test_a_waiter_gives_up_at_its_timeout(database_url: str) -> None:
    listener = ClosedListener(database_url)

    with listener.watching(uuid.uuid4().hex) as closing:
        started = time.monotonic()
        assert not closing.wait(0.2, lambda: False)

    assert 0.2 <= time.monotonic() - started < RECHECK_SECONDS
