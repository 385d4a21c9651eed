"""The workflow SDK, source-compatible with Mistral's: `from app import workflows`."""

from __future__ import annotations

from typing import Any

from app.workflows.activity import activity
from app.workflows.context import (
    current_activity_execution_id,
    current_heartbeat,
    current_runtime,
)
from app.workflows.errors import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowError,
)
from app.workflows.task import Task, task, task_from
from app.workflows.workflow import ChildWorkflowHandle, ParentClosePolicy, workflow


def get_execution_id() -> str | None:
    """The id of the execution this code runs for; None outside workflows and activities."""
    runtime = current_runtime.get()
    if runtime is not None:
        return runtime.execution_id
    return current_activity_execution_id.get()


def activity_heartbeat(*details: Any) -> None:
    """Say that the running activity is alive, with `details` of its progress (the last
    are kept, and shown in history). Needed by activities with a `heartbeat_timeout`;
    raises asyncio.CancelledError once the attempt is cancelled (its workflow stopped
    waiting for it, or its execution was cancelled or terminated), so that the code can
    clean up. Outside an activity attempt, it does nothing."""
    report = current_heartbeat.get()
    if report is not None:
        report(details)


__all__ = [
    "ActivityError",
    "ApplicationError",
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "ParentClosePolicy",
    "Task",
    "WorkflowError",
    "activity",
    "activity_heartbeat",
    "get_execution_id",
    "task",
    "task_from",
    "workflow",
]
