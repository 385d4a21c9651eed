"""`workflows.workflow`: defining workflows, and the replay-safe helpers their code calls."""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from app.workflows.compat import no_effect
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


def _warn_of_what_has_no_effect(
    *,
    schedules: list[Any] | None,
    is_technical: bool,
    enforce_determinism: bool | None,
    on_behalf_of: bool,
    search_keys: list[str] | None,
) -> None:
    if schedules is not None:
        no_effect("schedules", "schedules are not supported yet (Mistral deprecates these too)")
    if is_technical:
        no_effect("is_technical", "every workflow is listed alike")
    if enforce_determinism is False:
        no_effect("enforce_determinism", "Chainline always checks replay against history")
    if on_behalf_of:
        no_effect("on_behalf_of", "executions run as their caller")
    if search_keys is not None:
        no_effect("search_keys", "executions are not searchable by input yet")


# Lower-case because user code spells it `workflows.workflow`, as in Mistral's SDK.
class workflow:
    """Namespace of the workflow API: `workflows.workflow.define(...)`, `.now()` ..."""

    @staticmethod
    def define(
        name: str,
        workflow_description: str | None = None,
        schedules: list[Any] | None = None,
        workflow_display_name: str | None = None,
        is_technical: bool = False,
        enforce_determinism: bool | None = None,
        execution_timeout: timedelta = DEFAULT_EXECUTION_TIMEOUT,
        on_behalf_of: bool = False,
        search_keys: list[str] | None = None,
    ) -> Callable[[C], C]:
        """Register a class as the workflow `name`; its entrypoint method runs it.

        The keywords are Mistral's, in Mistral's order."""
        _warn_of_what_has_no_effect(
            schedules=schedules,
            is_technical=is_technical,
            enforce_determinism=enforce_determinism,
            on_behalf_of=on_behalf_of,
            search_keys=search_keys,
        )
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
