"""Celery beat's scheduler, running Chainline's housekeeping in the beat process itself.

Durable timers (app/engine/timers.py) are fired here too, every `timer_poll_seconds`.
The sweep (app/engine/sweeper.py) enforces deadlines: were it a task, it would wait in
the queue behind activities whenever every worker process is busy, which is exactly
when deadlines fall due. Here it runs every `sweep_interval_seconds` whatever the
workers do, and sends what it finds through the broker. Beat's own schedule (none yet,
schedules of executions are to come) runs as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery.beat import PersistentScheduler

from app.engine.dispatch import FollowUp
from app.engine.sweeper import sweep
from app.engine.timers import fire_timers
from app.errors import DatabaseUnavailable
from app.messaging.dispatcher import get_dispatcher
from app.settings import get_settings
from app.storage.db import get_engine

log = logging.getLogger(__name__)


class HousekeepingScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0
        self._next_timers = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay: float = super().tick(*args, **kwargs)
        settings = get_settings()
        if time.monotonic() >= self._next_timers:
            self._next_timers = time.monotonic() + settings.timer_poll_seconds
            fire_due_timers()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + settings.sweep_interval_seconds
            housekeeping(settings.stalled_after_seconds)
        wake_at = min(self._next_sweep, self._next_timers)
        return max(0.0, min(delay, wake_at - time.monotonic()))


def fire_due_timers() -> None:
    """Fire the timers that are due; an error is logged, and the next poll tries again."""
    _send_what_it_finds("firing timers", lambda: fire_timers(get_engine()))


def housekeeping(stalled_after_seconds: float) -> None:
    """One sweep; an error is logged, and the next sweep tries again."""
    _send_what_it_finds(
        "sweep", lambda: sweep(get_engine(), stalled_after_seconds=stalled_after_seconds)
    )


def _send_what_it_finds(what: str, find: Callable[[], list[FollowUp]]) -> None:
    try:
        follow_ups = find()
    except DatabaseUnavailable as exc:
        log.warning("%s skipped: %s", what, exc)
        return
    except Exception:
        log.exception("%s failed", what)
        return
    get_dispatcher().send(follow_ups)
