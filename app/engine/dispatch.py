"""What must be sent to the workers after a transaction commits.

The engine returns these; the Celery side (workers/dispatch.py) turns them into
messages. Keeping them as data lets the engine run, and be tested, without a broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ClaimTicket:
    """What the claim of a new activity's first attempt would read from Postgres,
    known to the workflow task that scheduled it (see leases.py)."""

    execution_id: str
    input: Any


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
