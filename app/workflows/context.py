"""The workflow runtime the SDK functions talk to while workflow code runs.

The engine's replayer installs one per workflow task; outside a workflow there is none,
which is how an activity called from a test stays a plain function.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Protocol

from app.workflows.registry import ActivityDefinition


class WorkflowRuntime(Protocol):
    execution_id: str
    rng: random.Random

    def now(self) -> datetime: ...

    def schedule_activity(
        self, definition: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]: ...

    def start_timer(self, seconds: float, summary: str | None) -> asyncio.Future[None]: ...

    def condition(self, predicate: Callable[[], bool]) -> asyncio.Future[None]: ...

    def should_continue_as_new(self) -> bool: ...

    def upsert_search_keys(
        self, values: dict[str, str | None], deleted: list[str]
    ) -> asyncio.Future[None]: ...

    def record_task_event(
        self, event_type: str, attributes: dict[str, Any]
    ) -> asyncio.Future[None]: ...

    def start_child(
        self,
        workflow_name: str,
        input_value: Any,
        *,
        execution_id: str | None,
        execution_timeout_seconds: float | None,
        parent_close_policy: str,
    ) -> tuple[str, asyncio.Future[Any]]: ...


current_runtime: ContextVar[WorkflowRuntime | None] = ContextVar(
    "chainline_workflow_runtime", default=None
)
current_activity_execution_id: ContextVar[str | None] = ContextVar(
    "chainline_activity_execution_id", default=None
)
# Set while an activity attempt runs: reports its heartbeats (app/engine/activities).
current_heartbeat: ContextVar[Callable[[tuple[Any, ...]], None] | None] = ContextVar(
    "chainline_activity_heartbeat", default=None
)


# Set while an activity attempt runs: writes its execution's search keys (values, deleted).
current_search_keys: ContextVar[Callable[[dict[str, str | None], list[str]], None] | None] = (
    ContextVar("chainline_activity_search_keys", default=None)
)


# Set while an activity attempt runs: records a custom task's event in its run's history.
current_task_events: ContextVar[Callable[[str, dict[str, Any]], None] | None] = ContextVar(
    "chainline_activity_task_events", default=None
)


class NotInWorkflow(RuntimeError):
    """This function only works inside workflow code."""


def runtime() -> WorkflowRuntime:
    rt = current_runtime.get()
    if rt is None:
        raise NotInWorkflow(NotInWorkflow.__doc__)
    return rt
