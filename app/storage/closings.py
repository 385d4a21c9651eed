"""Waiting for executions to close, woken by Postgres NOTIFY instead of polling.

The transaction that closes a run sends NOTIFY on `chainline_execution_closed` with the
execution id; one listener thread per API process wakes the requests waiting for it.
A waiter registered before its execution's work is dispatched cannot miss that
notification (short of the listener reconnecting), so it reads the execution only once
woken; a periodic re-check covers notifications lost while the listener reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

from app.storage.queries import QUERIES

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0
LISTEN_WAIT_SECONDS = 2.0


class ClosedListener:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()
        self._closed = threading.Event()

    @contextmanager
    def watching(self, execution_id: str) -> Iterator[Closing]:
        """Listen for the execution's closing from now on, while the block runs."""
        self._ensure_started()
        # Only a new listener makes this wait: its LISTEN must be on before the work
        # it waits for goes out. Should Postgres not answer, the re-checks still do.
        self._listening.wait(LISTEN_WAIT_SECONDS)
        closing = Closing()
        with self._lock:
            self._waiters[execution_id].add(closing.notified)
        try:
            yield closing
        finally:
            with self._lock:
                self._waiters[execution_id].discard(closing.notified)
                if not self._waiters[execution_id]:
                    del self._waiters[execution_id]

    def close(self) -> None:
        """Stop listening: the thread ends, and its connection closes, within a second."""
        self._closed.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=RECHECK_SECONDS * 2)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen_forever, name="chainline-closed-listener", daemon=True
                )
                self._thread.start()

    def _listen_forever(self) -> None:
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
            for event in self._waiters.get(execution_id, ()):
                event.set()


class Closing:
    """One execution's closing, as a waiter registered with `ClosedListener.watching`."""

    def __init__(self) -> None:
        self.notified = threading.Event()

    def wait(self, timeout: float, is_closed: Callable[[], bool]) -> bool:
        """Until notified that the execution closed (True), or `timeout` passes (the
        last `is_closed()`); `is_closed()` is asked every RECHECK_SECONDS meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self.notified.wait(max(0.0, min(remaining, RECHECK_SECONDS))):
                return True  # sent by the transaction that closed the run, at its commit
            if is_closed():
                return True
            if remaining <= RECHECK_SECONDS:
                return False
