"""Hearing of executions closing, from Postgres NOTIFY instead of polling.

The transaction that closes a run sends NOTIFY on `chainline_execution_closed` with the
execution id (record_step). One listener thread per process holds the LISTEN connection
and calls the wake-up of every subscriber to that execution. A subscriber registered
before its execution's work is dispatched cannot miss that notification (short of the
listener reconnecting), so callers need a periodic re-check only for that case.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

import psycopg

from app.storage.background import BackgroundThread
from app.storage.queries import QUERIES

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
LISTEN_WAIT_SECONDS = 2.0

Wake = Callable[[], None]


class Subscription:
    """One subscriber's interest in one execution's closing; `cancel` it when done."""

    def __init__(self, listener: ClosedListener, execution_id: str, wake: Wake) -> None:
        self._listener = listener
        self.execution_id = execution_id
        self.wake = wake

    def cancel(self) -> None:
        self._listener._unsubscribe(self)


class ClosedListener(BackgroundThread):
    def __init__(self, dsn: str) -> None:
        super().__init__("chainline-closed-listener")
        self._dsn = dsn
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._listening = threading.Event()

    def subscribe(self, execution_id: str, wake: Wake) -> Subscription:
        """Call `wake` (from the listener's thread) when the execution closes."""
        self._ensure_started()
        subscription = Subscription(self, execution_id, wake)
        with self._lock:
            self._subscribers[execution_id].add(subscription)
        return subscription

    def is_listening(self) -> bool:
        return self._listening.is_set()

    def wait_listening(self, timeout: float = LISTEN_WAIT_SECONDS) -> bool:
        """Whether LISTEN is on (only a new listener makes this wait): before it is,
        a closing could go unheard. Should Postgres not answer, re-checks still do."""
        return self._listening.wait(timeout)

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(subscription.execution_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[subscription.execution_id]

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(QUERIES["listen_for_closings"].text.encode())
                    self._listening.set()
                    while not self._closed.is_set():
                        # Back every second, to see whether the listener was closed.
                        for notification in conn.notifies(timeout=RECHECK_SECONDS):
                            self._wake(notification.payload)
            except psycopg.Error:
                self._listening.clear()
                if self._closed.is_set():
                    return
                log.warning("lost the LISTEN connection; reconnecting", exc_info=True)
                self._closed.wait(1.0)

    def _wake(self, execution_id: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(execution_id, ()))
        for subscription in subscribers:
            subscription.wake()
