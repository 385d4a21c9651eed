"""The workflow SDK, source-compatible with Mistral's: `from app import workflows`."""

from __future__ import annotations

from app.workflows.activity import activity
from app.workflows.context import current_activity_execution_id, current_runtime
from app.workflows.errors import ActivityError, ApplicationError, WorkflowError
from app.workflows.workflow import workflow


def get_execution_id() -> str | None:
    """The id of the execution this code runs for; None outside workflows and activities."""
    runtime = current_runtime.get()
    if runtime is not None:
        return runtime.execution_id
    return current_activity_execution_id.get()


__all__ = [
    "ActivityError",
    "ApplicationError",
    "WorkflowError",
    "activity",
    "get_execution_id",
    "workflow",
]
