"""Request bodies, and the JSON shapes the `mistralai` SDK parses (documented in OpenAPI).

The routes answer plain dicts built here (validating each answer against its model
would cost every request); the models document the same shapes, and the schemathesis
run checks that answers match them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.model.schedule_spec import (
    OverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleTimes,
)
from app.model.statuses import ExecutionStatus
from app.storage.executions import ExecutionRecord, StoredEvent
from app.storage.schedules import RecentStart, ScheduleRow

# URL-safe, since the SDK puts ids into paths unescaped.
EXECUTION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
# Ids that would collide with the batch endpoints under /v1/workflows/executions/.
RESERVED_EXECUTION_IDS = frozenset({"cancel", "terminate"})
LOCAL_TENANT = "local"
# The longest wait_for_result may wait.
MAX_WAIT_SECONDS = 3600.0


class WorkflowExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    execution_id: str | None = Field(default=None, pattern=EXECUTION_ID_PATTERN)
    input: Any = None
    wait_for_result: bool = False
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False
    )
    deployment_name: str | None = None
    task_queue: str | None = None

    @field_validator("execution_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_EXECUTION_IDS:
            raise ValueError(f"{value!r} is reserved by the HTTP API")
        return value


class HandlerInvocation(BaseModel):
    """The body of a signal, query or update (the SDK's *InvocationBody)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=200)
    input: dict[str, Any] | None = None


class ResetInvocationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: int = Field(ge=1)
    reason: str | None = Field(default=None, max_length=2000)
    exclude_signals: bool = False
    exclude_updates: bool = False


class SignalAccepted(BaseModel):
    message: str


class QueryResult(BaseModel):
    query_name: str
    result: Any


class UpdateResult(BaseModel):
    update_name: str
    result: Any


class BatchExecutionBody(BaseModel):
    execution_ids: list[Annotated[str, Field(pattern=EXECUTION_ID_PATTERN)]] = Field(
        max_length=1000
    )


class BatchExecutionResult(BaseModel):
    status: str
    error: str | None = None


class BatchExecutionResponse(BaseModel):
    results: dict[str, BatchExecutionResult]


class Error(BaseModel):
    """Every error Chainline answers, but validation errors (FastAPI's shape)."""

    detail: str
    code: str


class WorkflowBasic(BaseModel):
    id: str
    name: str
    display_name: str
    description: str | None
    archived: bool


class WorkflowList(BaseModel):
    workflows: list[WorkflowBasic]
    next_cursor: str | None


class WorkflowFull(WorkflowBasic):
    type: str
    customer_id: str
    workspace_id: str
    active: bool


class WorkflowGet(BaseModel):
    workflow: WorkflowFull


class RunListItem(BaseModel):
    """One run in a listing: the SDK's WorkflowExecutionWithoutResultResponse."""

    workflow_name: str
    execution_id: str
    root_execution_id: str
    parent_execution_id: str | None
    status: ExecutionStatus
    start_time: datetime
    end_time: datetime | None
    run_id: str
    user_id: str | None
    total_duration_ms: int | None


class Execution(RunListItem):
    """One execution as its current run (or a run, by id) shows it."""

    result: Any
    error: dict[str, Any] | None
    # Continue-as-new: the execution this one took over from, and its successor.
    continued_from_execution_id: str | None = None
    continued_as_execution_id: str | None = None
    # Only when asked for (include_search_keys).
    search_keys: dict[str, str | None] | None = None


class RunList(BaseModel):
    executions: list[RunListItem]
    next_page_token: str | None


class ExecutionResult(BaseModel):
    """wait_for_result's answer once the execution completed."""

    workflow_name: str
    execution_id: str
    result: Any


class Event(BaseModel):
    event_id: str
    event_timestamp: int
    root_workflow_exec_id: str
    parent_workflow_exec_id: str | None
    workflow_exec_id: str
    workflow_run_id: str
    workflow_name: str
    continued_run_id: str | None
    first_execution_run_id: str | None
    schedule_id: str | None
    event_type: str
    attributes: dict[str, Any]


class History(BaseModel):
    events: list[Event]


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def run_json(record: ExecutionRecord) -> dict[str, Any]:
    """A run as listings show it: without its result."""
    duration_ms = None
    if record.end_time is not None:
        duration_ms = int((record.end_time - record.start_time).total_seconds() * 1000)
    return {
        "workflow_name": record.workflow_name,
        "execution_id": record.execution_id,
        "root_execution_id": record.root_execution_id,
        "parent_execution_id": record.parent_execution_id,
        "status": record.status.value,
        "start_time": iso(record.start_time),
        "end_time": iso(record.end_time),
        "run_id": str(record.run_id),
        "user_id": record.user_id,
        "total_duration_ms": duration_ms,
    }


def execution_json(record: ExecutionRecord) -> dict[str, Any]:
    return {
        **run_json(record),
        "result": record.result,
        "error": record.error,
        "continued_from_execution_id": record.continued_from_execution_id,
        "continued_as_execution_id": record.continued_as_execution_id,
    }


def event_json(event: StoredEvent, record: ExecutionRecord) -> dict[str, Any]:
    return {
        "event_id": str(event.event_id),
        "event_timestamp": event.event_timestamp,
        "root_workflow_exec_id": record.root_execution_id,
        "parent_workflow_exec_id": record.parent_execution_id,
        "workflow_exec_id": event.execution_id,
        "workflow_run_id": str(event.run_id),
        "workflow_name": record.workflow_name,
        "continued_run_id": _text(record.continued_from_run_id),
        "first_execution_run_id": _text(record.first_execution_run_id),
        "schedule_id": record.schedule_id,
        "event_type": event.event_type,
        "attributes": event.attributes,
    }


# --- Schedules --------------------------------------------------------------------------

# URL-safe like execution ids, and short enough that the ids of the executions a
# schedule starts (the schedule's id, a dash and the tick, 24 characters) are too.
SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,150}$"
ScheduleId = Annotated[str, Field(pattern=SCHEDULE_ID_PATTERN)]


class ScheduleDefinitionBody(ScheduleSpec):
    """The SDK's ScheduleDefinition: a spec (validated whole), the input and policy."""

    input: Any
    policy: SchedulePolicy | None = None
    max_executions: int | None = Field(default=None, ge=1)
    schedule_id: ScheduleId | None = None


class WorkflowScheduleRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schedule: ScheduleDefinitionBody
    workflow_identifier: str | None = None
    workflow_registration_id: str | None = None
    workflow_version_id: str | None = None
    workflow_task_queue: str | None = None
    schedule_id: ScheduleId | None = None
    deployment_name: str | None = None


class PartialScheduleDefinition(ScheduleTimes):
    """The SDK's PartialScheduleDefinition: only the fields sent are changed (the spec
    they make with the stored fields is checked whole)."""

    input: Any = None
    policy: SchedulePolicy | None = None
    max_executions: int | None = Field(default=None, ge=1)


class WorkflowScheduleUpdateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schedule: PartialScheduleDefinition


class WorkflowSchedulePauseRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    note: str | None = Field(default=None, max_length=2000)


class WorkflowScheduleTriggerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    overlap: OverlapPolicy | None = None


class WorkflowScheduleResponse(BaseModel):
    schedule_id: str


class ScheduleFutureExecution(BaseModel):
    scheduled_at: datetime


class ScheduleRecentExecution(BaseModel):
    scheduled_at: datetime
    started_at: datetime
    execution_id: str


class ScheduleDefinitionOutput(ScheduleTimes):
    input: Any
    schedule_id: str
    workflow_name: str
    paused: bool
    policy: SchedulePolicy
    max_executions: int | None = None
    remaining_executions: int | None = None
    deployment_name: str | None = None
    note: str | None = None
    future_executions: list[ScheduleFutureExecution]
    recent_executions: list[ScheduleRecentExecution]
    missed_catchup_window: int
    user_id: str | None = None


class WorkflowScheduleListResponse(BaseModel):
    schedules: list[ScheduleDefinitionOutput]
    next_page_token: str | None = None


def schedule_json(
    row: ScheduleRow, future: list[datetime], recent: list[RecentStart]
) -> dict[str, Any]:
    return {
        "input": row.input,
        "schedule_id": row.schedule_id,
        "workflow_name": row.workflow_name,
        "paused": row.paused,
        **row.spec,
        "policy": {
            "catchup_window_seconds": row.catchup_window_seconds,
            "overlap": row.overlap,
            "pause_on_failure": row.pause_on_failure,
        },
        "max_executions": row.max_executions,
        "remaining_executions": row.remaining_executions,
        "deployment_name": row.deployment_name,
        "note": row.note,
        "future_executions": [{"scheduled_at": iso(moment)} for moment in future],
        "recent_executions": [
            {
                "scheduled_at": iso(start.tick),
                "started_at": iso(start.started_at),
                "execution_id": start.execution_id,
            }
            for start in recent
        ],
        "missed_catchup_window": row.missed_ticks,
        "user_id": row.user_id,
    }
