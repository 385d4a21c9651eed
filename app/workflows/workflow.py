"""`workflows.workflow`: defining workflows, and the replay-safe helpers their code calls."""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from app.workflows.context import runtime
from app.workflows.registry import (
    DEFAULT_EXECUTION_TIMEOUT,
    RESERVED_WORKFLOW_NAMES,
    WorkflowDefinition,
    registry,
)

C = TypeVar("C", bound=type)
A = TypeVar("A", bound=Callable[..., Awaitable[Any]])

_ENTRYPOINT_MARK = "__chainline_entrypoint__"


# Lower-case because user code spells it `workflows.workflow`, as in Mistral's SDK.
class workflow:
    """Namespace of the workflow API: `workflows.workflow.define(...)`, `.now()` ..."""

    @staticmethod
    def define(
        name: str,
        workflow_description: str | None = None,
        workflow_display_name: str | None = None,
        execution_timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT,
        **_ignored: Any,
    ) -> Callable[[C], C]:
        """Register a class as the workflow `name`; its entrypoint method runs it."""
        if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
            raise ValueError(f"workflow name {name!r} must match [A-Za-z0-9._-]+")
        if name in RESERVED_WORKFLOW_NAMES:
            raise ValueError(f"workflow name {name!r} is reserved by the HTTP API")

        def decorate(cls: C) -> C:
            entrypoints = [
                attr for attr, value in vars(cls).items() if getattr(value, _ENTRYPOINT_MARK, False)
            ]
            if len(entrypoints) != 1:
                raise ValueError(f"workflow {name!r} needs exactly one @workflow.entrypoint")
            registry.add_workflow(
                WorkflowDefinition(
                    name=name,
                    cls=cls,
                    entrypoint_name=entrypoints[0],
                    execution_timeout=execution_timeout,
                    description=workflow_description,
                    display_name=workflow_display_name,
                )
            )
            return cls

        return decorate

    @staticmethod
    def entrypoint(fn: A) -> A:
        """Mark the async method that runs the workflow."""
        setattr(fn, _ENTRYPOINT_MARK, True)
        return fn

    @staticmethod
    def now() -> datetime:
        """The current workflow time: the start time of the workflow task, as recorded."""
        return runtime().now()

    @staticmethod
    def uuid4() -> uuid.UUID:
        """A random UUID that replays to the same value."""
        return uuid.UUID(int=runtime().rng.getrandbits(128), version=4)

    @staticmethod
    def random() -> _random.Random:
        """A random generator seeded per run, so it replays to the same values."""
        return runtime().rng
