"""Execution statuses and the one table of legal transitions between them.

Postgres enforces the same table (see the initial migration's trigger); a test checks
that the two agree.
"""

from __future__ import annotations

from enum import StrEnum


class ExecutionStatus(StrEnum):
    RUNNING = "RUNNING"
    RETRYING_AFTER_ERROR = "RETRYING_AFTER_ERROR"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    TIMED_OUT = "TIMED_OUT"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"


S = ExecutionStatus

TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    S.RUNNING: frozenset(
        {
            S.RETRYING_AFTER_ERROR,
            S.COMPLETED,
            S.FAILED,
            S.CANCELED,
            S.TERMINATED,
            S.TIMED_OUT,
            S.CONTINUED_AS_NEW,
        }
    ),
    S.RETRYING_AFTER_ERROR: frozenset({S.RUNNING, S.FAILED, S.CANCELED, S.TERMINATED, S.TIMED_OUT}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELED: frozenset(),
    S.TERMINATED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.CONTINUED_AS_NEW: frozenset(),
}

OPEN_STATUSES: frozenset[ExecutionStatus] = frozenset(s for s, to in TRANSITIONS.items() if to)
TERMINAL_STATUSES: frozenset[ExecutionStatus] = frozenset(S) - OPEN_STATUSES


def can_transition(current: ExecutionStatus, new: ExecutionStatus) -> bool:
    return new in TRANSITIONS[current]


def sources_of(new: ExecutionStatus) -> frozenset[ExecutionStatus]:
    """Every status from which `new` may be entered: the guard of an UPDATE ... WHERE."""
    return frozenset(s for s, to in TRANSITIONS.items() if new in to)
