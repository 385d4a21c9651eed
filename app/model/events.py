"""History event types and the attribute shapes each one records.

The first group is the closed set the `mistralai` SDK parses (its WorkflowEventType);
the second is the engine's own bookkeeping, shown in history but never on the SDK's
typed event endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKFLOW_EXECUTION_STARTED = "WORKFLOW_EXECUTION_STARTED"
WORKFLOW_EXECUTION_COMPLETED = "WORKFLOW_EXECUTION_COMPLETED"
WORKFLOW_EXECUTION_FAILED = "WORKFLOW_EXECUTION_FAILED"
WORKFLOW_EXECUTION_CANCELED = "WORKFLOW_EXECUTION_CANCELED"
WORKFLOW_EXECUTION_CONTINUED_AS_NEW = "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
WORKFLOW_TASK_TIMED_OUT = "WORKFLOW_TASK_TIMED_OUT"
WORKFLOW_TASK_FAILED = "WORKFLOW_TASK_FAILED"
ACTIVITY_TASK_STARTED = "ACTIVITY_TASK_STARTED"
ACTIVITY_TASK_COMPLETED = "ACTIVITY_TASK_COMPLETED"
ACTIVITY_TASK_RETRYING = "ACTIVITY_TASK_RETRYING"
ACTIVITY_TASK_FAILED = "ACTIVITY_TASK_FAILED"

WORKFLOW_TASK_COMPLETED = "WORKFLOW_TASK_COMPLETED"
ACTIVITY_TASK_SCHEDULED = "ACTIVITY_TASK_SCHEDULED"
WORKFLOW_EXECUTION_TIMED_OUT = "WORKFLOW_EXECUTION_TIMED_OUT"
WORKFLOW_STATUS_CHANGED = "WORKFLOW_STATUS_CHANGED"
WORKFLOW_EXECUTION_TERMINATED = "WORKFLOW_EXECUTION_TERMINATED"
WORKFLOW_EXECUTION_CANCEL_REQUESTED = "WORKFLOW_EXECUTION_CANCEL_REQUESTED"
WORKFLOW_EXECUTION_SIGNALED = "WORKFLOW_EXECUTION_SIGNALED"
WORKFLOW_EXECUTION_UPDATE_ACCEPTED = "WORKFLOW_EXECUTION_UPDATE_ACCEPTED"
WORKFLOW_EXECUTION_UPDATE_COMPLETED = "WORKFLOW_EXECUTION_UPDATE_COMPLETED"
WORKFLOW_EXECUTION_UPDATE_REJECTED = "WORKFLOW_EXECUTION_UPDATE_REJECTED"
TIMER_STARTED = "TIMER_STARTED"
TIMER_FIRED = "TIMER_FIRED"
TIMER_CANCELED = "TIMER_CANCELED"
ACTIVITY_TASK_CANCEL_REQUESTED = "ACTIVITY_TASK_CANCEL_REQUESTED"
# A child workflow: its start (a command of the parent), and its outcome (delivered).
CHILD_WORKFLOW_STARTED = "CHILD_WORKFLOW_STARTED"
CHILD_WORKFLOW_COMPLETED = "CHILD_WORKFLOW_COMPLETED"
CHILD_WORKFLOW_FAILED = "CHILD_WORKFLOW_FAILED"
CHILD_OUTCOMES = frozenset({CHILD_WORKFLOW_COMPLETED, CHILD_WORKFLOW_FAILED})
# Workflow code changed its execution's search keys (a command).
SEARCH_KEYS_UPSERTED = "SEARCH_KEYS_UPSERTED"

ACTIVITY_OUTCOMES = frozenset({ACTIVITY_TASK_COMPLETED, ACTIVITY_TASK_FAILED})
# What a workflow task delivers to the workflow code, each at its recorded position.
DELIVERED = (
    ACTIVITY_OUTCOMES
    | CHILD_OUTCOMES
    | {
        TIMER_FIRED,
        WORKFLOW_EXECUTION_SIGNALED,
        WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        WORKFLOW_EXECUTION_CANCEL_REQUESTED,
    }
)
# What a workflow task records as the commands its code gave, checked on replay.
COMMANDS = frozenset(
    {
        ACTIVITY_TASK_SCHEDULED,
        ACTIVITY_TASK_CANCEL_REQUESTED,
        TIMER_STARTED,
        TIMER_CANCELED,
        WORKFLOW_EXECUTION_UPDATE_COMPLETED,
        WORKFLOW_EXECUTION_UPDATE_REJECTED,
        CHILD_WORKFLOW_STARTED,
        SEARCH_KEYS_UPSERTED,
    }
)


# The event types the `mistralai` SDK parses (its WorkflowEventType): streams and the
# events API carry these alone.
CUSTOM_TASK_STARTED = "CUSTOM_TASK_STARTED"
CUSTOM_TASK_IN_PROGRESS = "CUSTOM_TASK_IN_PROGRESS"
CUSTOM_TASK_COMPLETED = "CUSTOM_TASK_COMPLETED"
CUSTOM_TASK_FAILED = "CUSTOM_TASK_FAILED"
CUSTOM_TASK_TIMED_OUT = "CUSTOM_TASK_TIMED_OUT"
CUSTOM_TASK_CANCELED = "CUSTOM_TASK_CANCELED"
SDK_EVENT_TYPES = frozenset(
    {
        WORKFLOW_EXECUTION_STARTED,
        WORKFLOW_EXECUTION_COMPLETED,
        WORKFLOW_EXECUTION_FAILED,
        WORKFLOW_EXECUTION_CANCELED,
        WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        WORKFLOW_TASK_TIMED_OUT,
        WORKFLOW_TASK_FAILED,
        CUSTOM_TASK_STARTED,
        CUSTOM_TASK_IN_PROGRESS,
        CUSTOM_TASK_COMPLETED,
        CUSTOM_TASK_FAILED,
        CUSTOM_TASK_TIMED_OUT,
        CUSTOM_TASK_CANCELED,
        ACTIVITY_TASK_STARTED,
        ACTIVITY_TASK_COMPLETED,
        ACTIVITY_TASK_RETRYING,
        ACTIVITY_TASK_FAILED,
    }
)
# Endings the SDK has no type for, streamed as the nearest it has (app/api/streams.py):
# terminated as CANCELED, timed out as FAILED, each saying what really happened.
STREAMED_AS = {
    WORKFLOW_EXECUTION_TERMINATED: WORKFLOW_EXECUTION_CANCELED,
    WORKFLOW_EXECUTION_TIMED_OUT: WORKFLOW_EXECUTION_FAILED,
}
STREAMED = SDK_EVENT_TYPES | frozenset(STREAMED_AS)


@dataclass(frozen=True)
class HistoryEvent:
    """One event of a run's history, as replay reads it."""

    event_id: int
    event_type: str
    attributes: dict[str, Any]


def payload(value: Any) -> dict[str, Any]:
    """The SDK's JSONPayloadResponse."""
    return {"type": "json", "value": value}


def failure(error_type: str, message: str) -> dict[str, Any]:
    """The SDK's Failure, plus the error's type."""
    return {"message": message, "type": error_type}


def workflow_task_id(run_id: object, event_id: int) -> str:
    return f"{run_id}:wt:{event_id}"


def activity_task_id(run_id: object, seq: int) -> str:
    return f"{run_id}:activity:{seq}"


def update_outcome_key(update_id: str) -> str:
    """The dedup key of an update's outcome event: how the API finds it."""
    return f"update:{update_id}:outcome"


CANCEL_REQUESTED_KEY = "cancel-requested"
