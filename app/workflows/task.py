"""`workflows.task` / `workflows.task_from`: observable tasks, as in Mistral's SDK.

A task is a bounded piece of work (a long LLM call, a file being processed) that
reports its lifecycle to the execution's history and streams: CUSTOM_TASK_STARTED when
its block is entered, CUSTOM_TASK_IN_PROGRESS at each `update_state` (a JSON patch of
the keys that changed) or `set_state` (the whole state), then CUSTOM_TASK_COMPLETED with
the final state, or CUSTOM_TASK_FAILED / _CANCELED if the block raised. From workflow
code the events are recorded with the workflow task's commands (replay records them
once); from an activity, at once; anywhere else, nowhere.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import uuid
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel

from app.model import events as ev
from app.model.payloads import encode, storable_text
from app.workflows.context import current_runtime, current_task_events

T = TypeVar("T")


def _plain(state: Any) -> Any:
    """The state as JSON holds it."""
    if isinstance(state, BaseModel):
        return state.model_dump(mode="json")
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.asdict(state)
    return state


def _pointer(key: str) -> str:
    return "/" + key.replace("~", "~0").replace("/", "~1")


class Task(Generic[T]):
    """An observable task; use it as `async with workflows.task(...) as t:`."""

    def __init__(self, type: str, state: T | None = None, id: str | None = None) -> None:
        self._type = type
        self._state = state
        self._id = id or _new_id()

    @property
    def id(self) -> str:
        return self._id

    @property
    def type(self) -> str:
        return self._type

    @property
    def state(self) -> T | None:
        return self._state

    async def __aenter__(self) -> Self:
        attributes: dict[str, Any] = self._identity()
        if self._state is not None:
            attributes["payload"] = ev.payload(self._encoded(self._state))
        await _record(ev.CUSTOM_TASK_STARTED, attributes)
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, GeneratorExit):
            return  # the code is being discarded, not failing
        if exc is None:
            payload = ev.payload(None if self._state is None else self._encoded(self._state))
            await _record(ev.CUSTOM_TASK_COMPLETED, {**self._identity(), "payload": payload})
        elif isinstance(exc, asyncio.CancelledError):
            await _record(ev.CUSTOM_TASK_CANCELED, {**self._identity(), "reason": str(exc)})
        else:
            failure = ev.failure(type(exc).__name__, storable_text(str(exc)))
            await _record(ev.CUSTOM_TASK_FAILED, {**self._identity(), "failure": failure})

    async def set_state(self, state: T) -> None:
        """Replace the state; reported whole."""
        self._state = state
        await _record(
            ev.CUSTOM_TASK_IN_PROGRESS,
            {**self._identity(), "payload": ev.payload(self._encoded(state))},
        )

    async def update_state(self, updates: dict[str, Any]) -> None:
        """Change some of the state's keys; reported as a JSON patch of those keys."""
        before = _plain(self._state) or {}
        if isinstance(self._state, BaseModel):
            self._state = self._state.model_copy(update=updates)
        else:
            self._state = {**(before if isinstance(before, dict) else {}), **updates}  # type: ignore[assignment]
        plain = self._encoded(self._state)
        patch = [
            {
                "op": "replace" if key in before else "add",
                "path": _pointer(key),
                "value": plain[key],
            }
            for key in updates
        ]
        await _record(
            ev.CUSTOM_TASK_IN_PROGRESS,
            {**self._identity(), "payload": {"type": "json_patch", "value": patch}},
        )

    def _identity(self) -> dict[str, Any]:
        return {"custom_task_id": self._id, "custom_task_type": self._type}

    def _encoded(self, state: Any) -> Any:
        return encode(_plain(state), f"the state of task {self._type!r}")


def task(type: str, state: T | None = None, *, id: str | None = None) -> Task[T]:
    """An observable task of `type`, with an initial `state` to report (optional)."""
    return Task(type, state, id)


def task_from(state: T, type: str | None = None, *, id: str | None = None) -> Task[T]:
    """A task whose type is its state's (a pydantic model's title or class name, a
    dataclass's name) unless given; a dict or plain value needs an explicit type."""
    if type is None:
        type = _type_of(state)
    return Task(type, state, id)


def _type_of(state: Any) -> str:
    if isinstance(state, BaseModel):
        title = state.model_config.get("title")
        return str(title or state.__class__.__name__)
    if dataclasses.is_dataclass(state):
        return type(state).__name__
    raise ValueError(
        "Could not infer the task type from its state (a dict or plain value): pass type="
    )


def _new_id() -> str:
    """In workflow code, from its replayed random source (so replay agrees)."""
    rt = current_runtime.get()
    if rt is not None:
        return str(uuid.UUID(int=rt.rng.getrandbits(128), version=4))
    return str(uuid.uuid4())


async def _record(event_type: str, attributes: dict[str, Any]) -> None:
    rt = current_runtime.get()
    if rt is not None:
        await rt.record_task_event(event_type, attributes)
        return
    write = current_task_events.get()
    if write is not None:
        write(event_type, attributes)
