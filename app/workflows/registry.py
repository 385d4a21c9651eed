"""What a deployment knows: its workflow and activity definitions, by name."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from app.engine.retry import RetryPolicy
from app.errors import InvalidDefinition, WorkflowNotFound

# Route words under /v1/workflows that a workflow name would shadow.
RESERVED_WORKFLOW_NAMES = frozenset(
    {"archive", "unarchive", "registrations", "runs", "schedules", "events", "executions"}
)
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=1)
DEFAULT_START_TO_CLOSE_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    cls: type
    entrypoint_name: str
    execution_timeout: timedelta
    description: str | None = None
    display_name: str | None = None

    @property
    def entrypoint(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(self.cls, self.entrypoint_name)
        return fn


@dataclass
class Registry:
    workflows: dict[str, WorkflowDefinition] = field(default_factory=dict)
    activities: dict[str, ActivityDefinition] = field(default_factory=dict)

    def add_workflow(self, definition: WorkflowDefinition) -> None:
        existing = self.workflows.get(definition.name)
        if existing is not None and existing.cls.__qualname__ != definition.cls.__qualname__:
            raise InvalidDefinition(f"two workflows are named {definition.name!r}")
        self.workflows[definition.name] = definition

    def add_activity(self, definition: ActivityDefinition) -> None:
        existing = self.activities.get(definition.name)
        if existing is not None and existing.fn.__qualname__ != definition.fn.__qualname__:
            raise InvalidDefinition(f"two activities are named {definition.name!r}")
        self.activities[definition.name] = definition

    def workflow(self, name: str) -> WorkflowDefinition:
        try:
            return self.workflows[name]
        except KeyError:
            raise WorkflowNotFound(f"Workflow {name!r} not found") from None


registry = Registry()


def load_workflow_modules(module_names: list[str]) -> Registry:
    """Import each module so its decorators register their definitions."""
    for module_name in module_names:
        importlib.import_module(module_name)
    return registry
