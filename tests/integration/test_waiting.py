"""Waiting for an execution to close, woken by a real Postgres NOTIFY."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from app.storage.closings import RECHECK_SECONDS, ClosedListener
from app.storage.executions import CLOSED_CHANNEL


def _notify_closed(dsn: str, execution_id: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CLOSED_CHANNEL, execution_id))


@pytest.fixture
def listener(database_url: str) -> Iterator[ClosedListener]:
    listener = ClosedListener(database_url)
    yield listener
    listener.close()


def test_a_registered_waiter_is_woken_by_the_notification_without_reading(
    database_url: str, listener: ClosedListener
) -> None:
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
    listener: ClosedListener,
) -> None:
    answers = iter([False, True])

    with listener.watching(uuid.uuid4().hex) as closing:
        started = time.monotonic()
        assert closing.wait(30, lambda: next(answers))

    assert RECHECK_SECONDS * 2 <= time.monotonic() - started < 30


def test_a_waiter_gives_up_at_its_timeout(listener: ClosedListener) -> None:
    with listener.watching(uuid.uuid4().hex) as closing:
        started = time.monotonic()
        assert not closing.wait(0.2, lambda: False)

    assert 0.2 <= time.monotonic() - started < RECHECK_SECONDS


def test_a_closed_listener_stops_its_thread_and_connection(database_url: str) -> None:
    listener = ClosedListener(database_url)
    with listener.watching(uuid.uuid4().hex):
        pass
    thread = listener._thread
    assert thread is not None and thread.is_alive()

    listener.close()

    assert not thread.is_alive()
