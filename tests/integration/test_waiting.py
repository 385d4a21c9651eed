"""Hearing of an execution's closing from a real Postgres NOTIFY, and waiting for it on
the event loop (wait_for_result)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from app.api.waiting import Waited, Waiters
from app.settings import libpq_url
from app.storage.closings import ClosedListener
from app.storage.executions import CLOSED_CHANNEL


def _notify_closed(dsn: str, execution_id: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CLOSED_CHANNEL, execution_id))


@pytest.fixture
def listener(database_url: str) -> Iterator[ClosedListener]:
    listener = ClosedListener(libpq_url(database_url))
    yield listener
    listener.close()


def test_a_subscriber_is_woken_by_its_execution_s_notification_only(
    database_url: str, listener: ClosedListener
) -> None:
    execution_id = uuid.uuid4().hex
    woken = threading.Event()
    subscription = listener.subscribe(execution_id, woken.set)
    assert listener.wait_listening()
    _notify_closed(database_url, uuid.uuid4().hex)  # another execution's
    assert not woken.wait(0.3)
    _notify_closed(database_url, execution_id)
    assert woken.wait(5)
    subscription.cancel()


async def _no(*_: object) -> bool:
    return False


def test_a_waiter_on_the_event_loop_is_woken_by_the_notification(
    database_url: str, listener: ClosedListener
) -> None:
    execution_id = uuid.uuid4().hex
    waiters = Waiters(listener, limit=10)

    async def wait() -> tuple[Waited, float]:
        async with waiters.subscribed(execution_id) as closing:
            await asyncio.to_thread(_notify_closed, database_url, execution_id)
            started = time.monotonic()
            waited = await closing.wait(30, is_closed=_no, client_gone=_no)
            return waited, time.monotonic() - started

    waited, elapsed = asyncio.run(wait())
    assert waited is Waited.CLOSED and elapsed < 5


def test_a_waiter_stops_when_its_client_goes(listener: ClosedListener) -> None:
    waiters = Waiters(listener, limit=10)

    async def gone() -> bool:
        return True

    async def wait() -> Waited:
        async with waiters.subscribed(uuid.uuid4().hex) as closing:
            return await closing.wait(30, is_closed=_no, client_gone=gone)

    started = time.monotonic()
    assert asyncio.run(wait()) is Waited.CLIENT_GONE
    assert time.monotonic() - started < 5


def test_a_waiter_gives_up_at_its_timeout(listener: ClosedListener) -> None:
    waiters = Waiters(listener, limit=10)

    async def wait() -> Waited:
        async with waiters.subscribed(uuid.uuid4().hex) as closing:
            return await closing.wait(0.2, is_closed=_no, client_gone=_no)

    assert asyncio.run(wait()) is Waited.TIMED_OUT


def test_waiters_are_capped() -> None:
    waiters = Waiters(ClosedListener("postgresql://unused"), limit=2)
    assert waiters.reserve() and waiters.reserve()
    assert not waiters.reserve()
    waiters.release()
    assert waiters.reserve()


def test_a_closed_listener_stops_its_thread_and_connection(database_url: str) -> None:
    listener = ClosedListener(libpq_url(database_url))
    listener.subscribe(uuid.uuid4().hex, lambda: None).cancel()
    thread = listener._thread
    assert thread is not None and thread.is_alive()

    listener.close()

    assert not thread.is_alive()
