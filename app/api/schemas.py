"""Request bodies and the JSON shapes the `mistralai` SDK parses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.storage.executions import ExecutionRecord, StoredEvent

# URL-safe, since the SDK puts ids into paths unescaped.
EXECUTION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"
# Ids that would collide with the batch endpoints under /v1/workflows/executions/.
RESERVED_EXECUTION_IDS = frozenset({"cancel", "terminate"})
LOCAL_TENANT = "local"


class WorkflowExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    execution_id: str | None = Field(default=None, pattern=EXECUTION_ID_PATTERN)
    input: Any = None
    wait_for_result: bool = False
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    deployment_name: str | None = None
    task_queue: str | None = None

    @field_validator("execution_id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value in RESERVED_EXECUTION_IDS:
            raise ValueError(f"{value!r} is reserved by the HTTP API")
        return value


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def execution_json(record: ExecutionRecord) -> dict[str, Any]:
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
        "result": record.result,
        "error": record.error,
        "run_id": str(record.run_id),
        "user_id": record.user_id,
        "total_duration_ms": duration_ms,
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
        "event_type": event.event_type,
        "attributes": event.attributes,
    }
