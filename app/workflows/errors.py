"""Errors that workflow and activity code raise and catch (names as in Mistral's SDK)."""

from __future__ import annotations

from typing import Any


class WorkflowError(Exception):
    """An application error; `non_retryable=True` stops an activity's retries at once."""

    def __init__(
        self,
        message: str = "",
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.type = type or self.__class__.__name__
        self.non_retryable = non_retryable


ApplicationError = WorkflowError


class ActivityError(Exception):
    """What workflow code sees when an activity failed for good (retries exhausted)."""

    def __init__(self, message: str, *, activity_name: str, error_type: str, attempt: int) -> None:
        super().__init__(f"activity {activity_name!r} failed after {attempt} attempt(s): {message}")
        self.activity_name = activity_name
        self.attempt = attempt
        self.cause = ApplicationError(message, type=error_type)


class ContinueAsNew(BaseException):
    """Raised by `workflow.continue_as_new(...)`: ends the execution CONTINUED_AS_NEW and
    starts its successor with `input`. A BaseException, as Temporal's is, so that code
    catching Exception does not stop it on its way out."""

    def __init__(self, input_value: Any) -> None:
        super().__init__("continue as new")
        self.input_value = input_value


class ChildWorkflowError(Exception):
    """What workflow code sees when a child workflow it awaits did not complete (it
    failed, was cancelled, terminated or timed out, or could not start)."""

    def __init__(
        self,
        message: str,
        *,
        workflow_name: str,
        execution_id: str,
        status: str,
        error_type: str = "Exception",
    ) -> None:
        super().__init__(f"child workflow {workflow_name!r} ({execution_id}) {status}: {message}")
        self.message = message
        self.workflow_name = workflow_name
        self.execution_id = execution_id
        self.status = status
        self.type = error_type
