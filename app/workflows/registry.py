"""What a deployment knows: its workflow and activity definitions, by name.

A name means one definition: registering a second under a name already taken (an
activity `send_email` in two modules, say) raises at import, naming both, instead of
one silently replacing the other.
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from app.errors import InvalidDefinition, WorkflowNotFound
from app.model.retry import RetryPolicy

# Route words under /v1/workflows that a workflow name would shadow.
RESERVED_WORKFLOW_NAMES = frozenset(
    {
        "archive",
        "unarchive",
        "registrations",
        "runs",
        "schedules",
        "events",
        "executions",
        "deployments",
    }
)
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=1)
DEFAULT_START_TO_CLOSE_TIMEOUT = timedelta(minutes=5)


def origin(obj: Any) -> str:
    """Where a definition comes from: `module.qualified_name`."""
    return f"{obj.__module__}.{obj.__qualname__}"


@dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    start_to_close_timeout: timedelta
    retry_policy: RetryPolicy
    # How long a running attempt may go without `workflows.activity_heartbeat()`.
    heartbeat_timeout: timedelta | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


HandlerKind = Literal["signal", "query", "update"]


@dataclass(frozen=True)
class HandlerDefinition:
    """A workflow's signal, query or update handler: a method of the workflow class."""

    kind: HandlerKind
    name: str
    method_name: str
    fn: Callable[..., Any]
    description: str | None = None

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
    signals: dict[str, HandlerDefinition] = field(default_factory=dict)
    queries: dict[str, HandlerDefinition] = field(default_factory=dict)
    updates: dict[str, HandlerDefinition] = field(default_factory=dict)
    # Dot paths into the input whose values each execution is searchable by.
    search_keys: tuple[str, ...] = ()

    @property
    def entrypoint(self) -> Callable[..., Any]:
        fn: Callable[..., Any] = getattr(self.cls, self.entrypoint_name)
        return fn

    def handlers(self, kind: HandlerKind) -> dict[str, HandlerDefinition]:
        return {"signal": self.signals, "query": self.queries, "update": self.updates}[kind]


@dataclass
class Registry:
    workflows: dict[str, WorkflowDefinition] = field(default_factory=dict)
    activities: dict[str, ActivityDefinition] = field(default_factory=dict)

    def add_workflow(self, definition: WorkflowDefinition) -> None:
        existing = self.workflows.get(definition.name)
        if existing is not None:
            _refuse_a_second(f"workflow {definition.name!r}", existing.cls, definition.cls)
        self.workflows[definition.name] = definition

    def add_activity(self, definition: ActivityDefinition) -> None:
        existing = self.activities.get(definition.name)
        if existing is not None:
            _refuse_a_second(f"activity {definition.name!r}", existing.fn, definition.fn)
        self.activities[definition.name] = definition

    def workflow(self, name: str) -> WorkflowDefinition:
        try:
            return self.workflows[name]
        except KeyError:
            raise WorkflowNotFound(f"Workflow {name!r} not found") from None


def _refuse_a_second(what: str, existing: Any, new: Any) -> None:
    # The same definition again (its module imported anew) replaces itself.
    if origin(existing) != origin(new):
        raise InvalidDefinition(
            f"{what} is defined twice: by {origin(existing)} and by {origin(new)}"
        )


registry = Registry()


class WorkflowModuleError(Exception):
    """A module named in CHAINLINE_WORKFLOWS cannot be imported; the message is one line."""


def load_workflow_modules(module_names: list[str]) -> Registry:
    """Import each module so its decorators register their definitions."""
    for module_name in module_names:
        try:
            importlib.import_module(module_name)
        except Exception as exc:
            raise WorkflowModuleError(_import_failure(module_name, exc)) from exc
    return registry


def _import_failure(module_name: str, exc: Exception) -> str:
    """Why `module_name` did not import, in one line: the error and where it was raised."""
    said = f"cannot import workflow module {module_name!r} (CHAINLINE_WORKFLOWS)"
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing is not None and (module_name == missing or module_name.startswith(missing + ".")):
        return (
            f"{said}: no module named {missing!r} here; run from the folder that holds "
            "it, or add that folder to PYTHONPATH"
        )
    reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    frames = traceback.extract_tb(exc.__traceback__)
    inside_importlib = f"{os.sep}importlib{os.sep}"
    ours = [frame for frame in frames if inside_importlib not in frame.filename]
    where = f" at {ours[-1].filename}:{ours[-1].lineno}" if ours else ""
    return f"{said}: {reason}{where}"
