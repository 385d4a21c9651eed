"""What must happen after a transaction commits: the engine's answer, as data.

The engine returns a FollowUp; the Celery side (app/messaging/dispatcher.py) turns its
dispatches into messages and its stops into revocations. Keeping them as data lets the
engine run, and be tested, without a broker. Every message is safe to send twice: a
claim or a workflow task that finds its work done does nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class ActivityDispatch:
    run_id: uuid.UUID
    seq: int
    activity_name: str
    start_to_close_seconds: float


@dataclass(frozen=True)
class Dispatch:
    """Run these activities (possibly none), then a workflow task for the run.

    `countdown`: seconds before the first message may run (a retry's backoff)."""

    run_id: uuid.UUID
    activities: tuple[ActivityDispatch, ...] = ()
    countdown: float = 0.0


@dataclass(frozen=True)
class FollowUp:
    """The outcome of a piece of engine work, and what to do once it has committed.

    `retry_in`: the message being handled should be delivered again after that many
    seconds (its work is not due yet). `advanced`: the run's workflow task already ran,
    so a chained one has nothing to do. `failure`: the attempt this message ran was
    recorded as failed (`ev.failure` of it), so that its task ends as a failure too.
    """

    reason: str
    dispatches: tuple[Dispatch, ...] = ()
    # Celery task ids of attempts whose run closed: they are stopped.
    stop_task_ids: tuple[str, ...] = ()
    retry_in: float | None = None
    advanced: bool = False
    failure: dict[str, str] | None = None
