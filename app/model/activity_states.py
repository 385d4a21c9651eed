"""Activity states and the one table of legal transitions between them.

An activity row follows its current attempt: SCHEDULED until an attempt is claimed,
STARTED while one runs, BACKING_OFF between a failed attempt and the next, then one of
the three ends. Postgres enforces the same table (migration 0004's trigger); a test
checks that the two agree.
"""

from __future__ import annotations

from enum import StrEnum


class ActivityState(StrEnum):
    SCHEDULED = "SCHEDULED"
    STARTED = "STARTED"
    BACKING_OFF = "BACKING_OFF"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # Its run closed (or its workflow ended without awaiting it): never run again, and
    # whatever an attempt still running returns is not recorded.
    ABANDONED = "ABANDONED"


A = ActivityState

ACTIVITY_TRANSITIONS: dict[ActivityState, frozenset[ActivityState]] = {
    A.SCHEDULED: frozenset({A.STARTED, A.ABANDONED}),
    A.STARTED: frozenset({A.COMPLETED, A.FAILED, A.BACKING_OFF, A.ABANDONED}),
    A.BACKING_OFF: frozenset({A.STARTED, A.ABANDONED}),
    A.COMPLETED: frozenset(),
    A.FAILED: frozenset(),
    A.ABANDONED: frozenset(),
}

IN_FLIGHT_STATES: frozenset[ActivityState] = frozenset(
    s for s, to in ACTIVITY_TRANSITIONS.items() if to
)
FINAL_STATES: frozenset[ActivityState] = frozenset(A) - IN_FLIGHT_STATES


def activity_sources_of(new: ActivityState) -> frozenset[ActivityState]:
    """Every state from which `new` may be entered: the guard of an UPDATE ... WHERE."""
    return frozenset(s for s, to in ACTIVITY_TRANSITIONS.items() if new in to)
