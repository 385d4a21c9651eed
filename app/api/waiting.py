"""Waiting for executions to close, woken by Postgres NOTIFY instead of polling.

The transaction that closes a run sends NOTIFY on `chainline_execution_closed` with the
execution id; one listener thread per API process wakes the requests waiting for it.
A periodic re-check covers notifications lost while the listener reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import psycopg

from app.storage.history import CLOSED_CHANNEL

log = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0


class ClosedListener:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wait(self, execution_id: str, timeout: float, is_closed: Callable[[], bool]) -> bool:
        """Block until `is_closed()` is true or `timeout` passes; return the last answer."""
        self._ensure_started()
        woken = threading.Event()
        with self._lock:
            self._waiters[execution_id].add(woken)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if is_closed():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                woken.wait(min(remaining, RECHECK_SECONDS))
                woken.clear()
        finally:
            with self._lock:
                self._waiters[execution_id].discard(woken)
                if not self._waiters[execution_id]:
                    del self._waiters[execution_id]

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen_forever, name="chainline-closed-listener", daemon=True
                )
                self._thread.start()

    def _listen_forever(self) -> None:
        while True:
            try:
                with psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CLOSED_CHANNEL}")
                    for notification in conn.notifies():
                        self._wake(notification.payload)
            except psycopg.Error:
                log.warning("lost the LISTEN connection; reconnecting", exc_info=True)
                time.sleep(1.0)

    def _wake(self, execution_id: str) -> None:
        with self._lock:
            for event in self._waiters.get(execution_id, ()):
                event.set()
