"""What must be sent to the workers after a transaction commits.

The engine returns these; the Celery side (workers/dispatch.py) turns them into
messages. Keeping them as data lets the engine run, and be tested, without a broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from app.engine.replay import HistoryEvent


@dataclass(frozen=True)
class RunSnapshot:
    """The run as the workflow task that scheduled an activity left it: what recording
    that activity's outcome would read from Postgres under the run's lock, its history
    cut to what replay reads (`replay_view`).

    It holds only while the run's `last_event_id` is unchanged (history is append-only
    within a run), and the write that uses it checks that under the same lock.
    """

    workflow_name: str
    deadline: datetime
    random_seed: int
    last_event_id: int
    processed_event_id: int
    history: tuple[HistoryEvent, ...]


@dataclass(frozen=True)
class ClaimTicket:
    """What the claim of a new activity's first attempt would read from Postgres,
    known to the workflow task that scheduled it (see leases.py). `run` is set when
    that workflow task left the run plainly RUNNING with this one activity in flight."""

    execution_id: str
    input: Any
    run: RunSnapshot | None = None


@dataclass(frozen=True)
class ActivityDispatch:
    run_id: uuid.UUID
    seq: int
    activity_name: str
    start_to_close_seconds: float
    # Set for an activity just scheduled; its first attempt can then be claimed
    # without reading Postgres.
    ticket: ClaimTicket | None = None


@dataclass(frozen=True)
class Dispatch:
    """Run these activities (possibly none), then a workflow task for the run."""

    run_id: uuid.UUID
    activities: tuple[ActivityDispatch, ...] = ()


class Dispatcher(Protocol):
    def send(self, dispatches: list[Dispatch]) -> None: ...
