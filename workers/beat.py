"""Celery beat's scheduler (its `beat_scheduler` extension point): Chainline's schedules
and housekeeping, run in the beat process itself, from Postgres alone.

Schedules (app/engine/schedules.py) are read from Postgres every
`schedule_poll_seconds`: one created, changed, paused or deleted through the API counts
from the next poll, with no schedule file and no restart, and any number of beat
processes may run (each tick is fired once, whichever fires it). Durable timers
(app/engine/timers.py) are fired every `timer_poll_seconds`, and the events ready for
the stream numbered (app/storage/streams.py). The sweep
(app/engine/sweeper.py) enforces deadlines: were it a task, it would wait in the queue
behind activities whenever every worker process is busy, which is exactly when
deadlines fall due. Here it runs every `sweep_interval_seconds` whatever the
workers do, and sends what it finds through the broker. Beat's own schedule (none)
runs as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery.beat import PersistentScheduler

from app.engine.dispatch import FollowUp
from app.engine.schedules import fire_due_schedules
from app.engine.sweeper import sweep
from app.engine.timers import fire_timers
from app.errors import DatabaseUnavailable
from app.messaging.dispatcher import get_dispatcher
from app.settings import get_settings
from app.storage.db import get_engine
from app.storage.streams import number_new_events
from app.storage.transactions import transaction
from workers.celery_app import registry

log = logging.getLogger(__name__)


class ChainlineScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0
        self._next_timers = 0.0
        self._next_schedules = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay: float = super().tick(*args, **kwargs)
        settings = get_settings()
        if time.monotonic() >= self._next_schedules:
            self._next_schedules = time.monotonic() + settings.schedule_poll_seconds
            fire_schedules()
        if time.monotonic() >= self._next_timers:
            self._next_timers = time.monotonic() + settings.timer_poll_seconds
            fire_due_timers()
            number_stream_events()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + settings.sweep_interval_seconds
            housekeeping(settings.stalled_after_seconds)
        wake_at = min(self._next_sweep, self._next_timers, self._next_schedules)
        return max(0.0, min(delay, wake_at - time.monotonic()))


def fire_schedules() -> None:
    """Fire the schedules that are due; an error is logged, and the next poll tries
    again (nothing of a failed batch was recorded)."""
    _send_what_it_finds("firing schedules", lambda: fire_due_schedules(get_engine(), registry))


def fire_due_timers() -> None:
    """Fire the timers that are due; an error is logged, and the next poll tries again."""
    _send_what_it_finds("firing timers", lambda: fire_timers(get_engine()))


def number_stream_events() -> None:
    """Number the events ready for the stream (app/storage/streams.py), so that the
    events API and streams find them numbered; an API process streaming does it too."""
    try:
        with transaction(get_engine()) as tx:
            number_new_events(tx)
    except DatabaseUnavailable as exc:
        log.warning("numbering stream events skipped: %s", exc)
    except Exception:
        log.exception("numbering stream events failed")


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
