"""Every domain error Chainline reports, each with a stable code and HTTP status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ChainlineError(Exception):
    """Something went wrong in Chainline."""

    code = "WF_1000"
    http_status = 400
    # Sent with the error's HTTP answer.
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or (self.__doc__ or "").strip()
        super().__init__(self.detail)


class NotFound(ChainlineError):
    """Not found."""

    code = "WF_1100"
    http_status = 404


class WorkflowNotFound(NotFound):
    """Workflow not found."""


class ExecutionNotFound(NotFound):
    """Execution not found."""


class RunNotFound(NotFound):
    """Run not found."""


class InvalidResetPoint(ChainlineError):
    """A reset names an event that is not one of the run's WORKFLOW_TASK_COMPLETED."""

    code = "WF_1001"
    http_status = 422

    def __init__(self, detail: str, event_id: int, valid_event_ids: list[int]) -> None:
        super().__init__(detail)
        self.event_id = event_id
        self.valid_event_ids = valid_event_ids


class AlreadyStarted(ChainlineError):
    """An execution with this id already exists."""

    code = "WF_1101"
    http_status = 409


class ScheduleNotFound(NotFound):
    """Schedule not found."""


class ScheduleExists(ChainlineError):
    """A schedule with this id already exists."""

    code = "WF_1107"
    http_status = 409


class HandlerNotFound(NotFound):
    """The workflow has no handler of that name."""


class ExecutionClosed(ChainlineError):
    """The execution has ended: it takes no signals, updates, cancel or terminate."""

    code = "WF_1102"
    http_status = 409


class UpdateRejected(ChainlineError):
    """The workflow's update handler rejected the update; the execution goes on."""

    code = "WF_1105"
    http_status = 400


class QueryFailed(ChainlineError):
    """The workflow's query handler could not answer."""

    code = "WF_1106"
    http_status = 400


class IllegalTransition(ChainlineError):
    """The status change is not allowed from the current status."""

    code = "WF_1103"
    http_status = 409


class Unauthorized(ChainlineError):
    """Invalid or missing API key."""

    code = "WF_1401"
    http_status = 401
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": "Bearer"}


class PayloadTooLarge(ChainlineError):
    """The payload is larger than the limit."""

    code = "WF_1002"
    http_status = 413


class InvalidDefinition(ChainlineError):
    """A workflow or activity definition is invalid."""

    code = "WF_1003"
    http_status = 500


class InvalidPayload(ChainlineError):
    """The payload is not JSON that Postgres can store."""

    code = "WF_1004"
    http_status = 422


class ServiceUnavailable(ChainlineError):
    """Postgres cannot be reached right now; try again shortly."""

    code = "WF_1200"
    http_status = 503
    headers: ClassVar[Mapping[str, str]] = {"Retry-After": "5"}


class DatabaseUnavailable(ServiceUnavailable):
    """Postgres is unreachable, restarting or read-only; the work itself is fine."""


class TooManyWaiting(ServiceUnavailable):
    """Too many requests already wait for results on this API process: try again
    shortly, or start without wait_for_result and poll the execution."""

    code = "WF_1201"


class StillRunning(ChainlineError):
    """The execution did not finish within the wait; it goes on."""

    code = "WF_1104"
    http_status = 408


class NotImplementedYet(ChainlineError):
    """Chainline does not implement this route yet."""

    code = "WF_1300"
    http_status = 501
