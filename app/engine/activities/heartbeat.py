"""Heartbeats: a running attempt says it is alive, and learns whether it should stop.

`workflows.activity_heartbeat(*details)` calls the attempt's Heartbeats. It writes to
Postgres at most every `every` seconds (the latest details win), moving the attempt's
heartbeat deadline on. When Postgres says the attempt is no longer current (the
workflow cancelled it, the run was cancelled or terminated, or it was timed out), the
heartbeat raises asyncio.CancelledError in the activity's code, so that its `finally`
blocks clean up; the attempt's result, if any, is not recorded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy import Engine

from app.engine.activities.claim import Attempt
from app.errors import DatabaseUnavailable, InvalidPayload, PayloadTooLarge
from app.model.payloads import encode
from app.storage.runs import record_heartbeat
from app.storage.transactions import transaction

log = logging.getLogger(__name__)

# The most often a heartbeat is written: often enough that a cancel is seen within it.
LONGEST_INTERVAL_SECONDS = 1.0


class AttemptCancelled(asyncio.CancelledError):
    """The attempt is no longer current: its code is to stop, cleaning up."""


class Heartbeats:
    """The heartbeats of one attempt. Details given between two writes are not lost: the
    latest are written when the interval ends (from a timer thread, should the code go
    quiet), and when the attempt ends (`close`)."""

    def __init__(self, engine: Engine, attempt: Attempt) -> None:
        self.engine = engine
        self.attempt = attempt
        timeout = attempt.definition.heartbeat_timeout
        # Well inside the heartbeat timeout, so that one late write does not miss it.
        self.every = min(
            LONGEST_INTERVAL_SECONDS,
            timeout.total_seconds() / 3 if timeout is not None else LONGEST_INTERVAL_SECONDS,
        )
        self._lock = threading.Lock()
        self._next_write = 0.0
        self._pending: tuple[Any, ...] | None = None
        self._timer: threading.Timer | None = None
        self._cancelled = False

    def __call__(self, details: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending = details
            wait = self._next_write - time.monotonic()
            if wait > 0 and not self._cancelled:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        if not self._cancelled:
            self._write()
        if self._cancelled:
            raise AttemptCancelled(self._why())

    def close(self) -> None:
        """The attempt ended: write details still pending, stop the timer."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._write()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
        self._write()

    def _write(self) -> None:
        with self._lock:
            details, self._pending = self._pending, None
            if details is None or self._cancelled:
                return
            self._next_write = time.monotonic() + self.every
        attempt = self.attempt
        try:
            with transaction(self.engine) as tx:
                current = record_heartbeat(
                    tx, attempt.run_id, attempt.seq, attempt.task_id, _storable(details)
                )
        except DatabaseUnavailable as exc:
            # Not fatal: the attempt goes on, and the next heartbeat tries again.
            log.warning(
                "heartbeat of run %s activity %s not written: %s", attempt.run_id, attempt.seq, exc
            )
            return
        if not current:
            self._cancelled = True

    def _why(self) -> str:
        return (
            f"attempt {self.attempt.attempt} of activity {self.attempt.definition.name!r} was"
            " cancelled: the workflow stopped waiting for it, or its execution ended"
        )


def _storable(details: tuple[Any, ...]) -> Any:
    """The details as JSON Postgres stores; what cannot be is kept as its repr."""
    try:
        return encode(list(details), "heartbeat details")
    except (InvalidPayload, PayloadTooLarge):
        return encode([repr(to_jsonable_python(d, fallback=repr)) for d in details], "details")
