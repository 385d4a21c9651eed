"""Firing durable timers: beat's work (workers/beat.py), from Postgres alone.

A timer is a row written with the workflow task that started it; beat fires the due
ones in batches, each batch one statement that records TIMER_FIRED and makes the runs'
workflow tasks due, then sends those tasks. A lost message is sent again by the sweeper
like any stalled workflow task, so a sleep outlives a worker's death and a flushed
broker alike.
"""

from __future__ import annotations

from sqlalchemy import Engine

from app.engine.dispatch import Dispatch, FollowUp
from app.storage.timers import fire_due_timers
from app.storage.transactions import transaction

BATCH = 500
# Batches fired in one call at most, so that beat's other work is never held up long.
MOST_BATCHES = 20


def fire_timers(engine: Engine) -> list[FollowUp]:
    """Fire every due timer (up to MOST_BATCHES batches); returns what to send."""
    follow_ups = []
    for _ in range(MOST_BATCHES):
        with transaction(engine) as tx:
            run_ids = fire_due_timers(tx, limit=BATCH)
        if run_ids:
            dispatches = tuple(Dispatch(run_id) for run_id in dict.fromkeys(run_ids))
            follow_ups.append(FollowUp("timers fired", dispatches=dispatches))
        if len(run_ids) < BATCH:
            break
    return follow_ups
