"""`workflows.workflow`: defining workflows, and the replay-safe helpers their code calls."""

from __future__ import annotations

import asyncio
import inspect
import random as _random
import re
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Any, NoReturn, TypeVar, get_type_hints

from pydantic import BaseModel, TypeAdapter

from app.errors import InvalidDefinition
from app.model.search_keys import MAX_KEYS, check_key, checked_changes
from app.workflows.compat import no_effect
from app.workflows.context import (
    NotInWorkflow,
    current_runtime,
    current_search_keys,
    runtime,
)
from app.workflows.errors import ContinueAsNew, WorkflowError
from app.workflows.registry import (
    DEFAULT_EXECUTION_TIMEOUT,
    RESERVED_WORKFLOW_NAMES,
    HandlerDefinition,
    HandlerKind,
    WorkflowDefinition,
    origin,
    registry,
)

# Ids go into URL paths unescaped (app/api/schemas.py's EXECUTION_ID_PATTERN).
_URL_SAFE = re.compile(r"[A-Za-z0-9._-]{1,200}")

C = TypeVar("C", bound=type)
A = TypeVar("A", bound=Callable[..., Awaitable[Any]])
F = TypeVar("F", bound=Callable[..., Any])

_ENTRYPOINT_MARK = "__chainline_entrypoint__"
# Set on a workflow class by define: the name it is registered under.
_WORKFLOW_NAME_MARK = "__chainline_workflow_name__"


class ParentClosePolicy(IntEnum):
    """What a parent's closing does to a child still running (Temporal's values)."""

    UNSPECIFIED = 0
    TERMINATE = 1
    ABANDON = 2
    REQUEST_CANCEL = 3


class ChildWorkflowHandle:
    """A child workflow started with `wait=False`: its `execution_id`, and its result
    when awaited (raising ChildWorkflowError if it did not complete)."""

    def __init__(self, execution_id: str, outcome: asyncio.Future[Any]) -> None:
        self.execution_id = execution_id
        self._outcome = outcome

    @property
    def id(self) -> str:
        return self.execution_id

    def done(self) -> bool:
        return self._outcome.done()

    async def result(self) -> Any:
        return await self._outcome

    def __await__(self) -> Generator[Any, None, Any]:
        return self._outcome.__await__()


async def _change_search_keys(values: Mapping[str, Any], deleted: list[str]) -> None:
    try:
        checked, removed = checked_changes(values, deleted)
    except ValueError as exc:
        raise WorkflowError(str(exc), type="InvalidSearchKey", non_retryable=True) from None
    rt = current_runtime.get()
    if rt is not None:
        await rt.upsert_search_keys(checked, removed)
        return
    write = current_search_keys.get()
    if write is not None:
        write(checked, removed)


def _workflow_name(workflow_type: type | str) -> str:
    if isinstance(workflow_type, str):
        return workflow_type
    name = getattr(workflow_type, _WORKFLOW_NAME_MARK, None)
    if not isinstance(name, str):
        raise InvalidDefinition(f"{workflow_type!r} is not a workflow (@workflow.define)")
    return name


_HANDLER_MARK = "__chainline_handler__"


@dataclass(frozen=True)
class _HandlerMark:
    kind: HandlerKind
    name: str
    description: str | None


def _handler_decorator(
    kind: HandlerKind, name: str | None, description: str | None
) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        if not inspect.isfunction(fn):
            raise InvalidDefinition(f"@workflow.{kind} decorates methods, not {fn!r}")
        _check_handler(kind, fn)
        setattr(fn, _HANDLER_MARK, _HandlerMark(kind, name or fn.__name__, description))
        return fn

    return decorate


def _check_handler(kind: HandlerKind, fn: Callable[..., Any]) -> None:
    """Refuse, at import, a handler that could never be called as its kind is."""
    where = f"{kind} handler {origin(fn)}"
    try:
        hints = get_type_hints(fn)
    except Exception as exc:
        raise InvalidDefinition(f"{where}: its annotations do not resolve: {exc}") from exc
    for parameter in list(inspect.signature(fn).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        try:
            TypeAdapter(hints.get(parameter.name, Any))
        except Exception as exc:
            raise InvalidDefinition(
                f"{where}: parameter {parameter.name!r} cannot be read from JSON: {exc}"
            ) from exc
    returns = hints.get("return", inspect.Signature.empty)
    returns_nothing = returns is None or returns is type(None)
    if kind == "query" and inspect.iscoroutinefunction(fn):
        raise InvalidDefinition(f"{where} must be a plain def: queries cannot await anything")
    if kind in ("query", "update") and (returns_nothing or returns is inspect.Signature.empty):
        raise InvalidDefinition(f"{where} must declare what it returns (not None)")
    if kind == "signal" and not returns_nothing and returns is not inspect.Signature.empty:
        raise InvalidDefinition(f"{where} returns {returns!r}; signals return nothing (-> None)")


def _handlers_of(cls: type, workflow_name: str) -> dict[HandlerKind, dict[str, HandlerDefinition]]:
    found: dict[HandlerKind, dict[str, HandlerDefinition]] = {
        "signal": {},
        "query": {},
        "update": {},
    }
    seen: dict[str, HandlerDefinition] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            mark = getattr(value, _HANDLER_MARK, None)
            if not isinstance(mark, _HandlerMark):
                continue
            handler = HandlerDefinition(mark.kind, mark.name, attr, value, mark.description)
            same = found[mark.kind].get(mark.name)
            if same is not None and same.method_name != attr:
                raise InvalidDefinition(
                    f"workflow {workflow_name!r} has two {mark.kind} handlers named "
                    f"{mark.name!r}: {origin(same.fn)} and {origin(value)}"
                )
            other = seen.get(mark.name)
            if other is not None and other.kind != mark.kind and other.method_name != attr:
                raise InvalidDefinition(
                    f"workflow {workflow_name!r} uses the name {mark.name!r} for a "
                    f"{other.kind} ({origin(other.fn)}) and a {mark.kind} ({origin(value)})"
                )
            found[mark.kind][mark.name] = handler
            seen[mark.name] = handler
    return found


def _seconds(duration: timedelta | float, what: str) -> float:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{what} must be a finite duration of zero or more, not {duration!r}")
    return seconds


def _warn_of_what_has_no_effect(
    *,
    schedules: list[Any] | None,
    is_technical: bool,
    enforce_determinism: bool | None,
    on_behalf_of: bool,
) -> None:
    if schedules is not None:
        no_effect("schedules", "schedules are not supported yet (Mistral deprecates these too)")
    if is_technical:
        no_effect("is_technical", "every workflow is listed alike")
    if enforce_determinism is False:
        no_effect("enforce_determinism", "Chainline always checks replay against history")
    if on_behalf_of:
        no_effect("on_behalf_of", "executions run as their caller")


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
        )
        if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
            raise ValueError(f"workflow name {name!r} must match [A-Za-z0-9._-]+")
        if name in RESERVED_WORKFLOW_NAMES:
            raise ValueError(f"workflow name {name!r} is reserved by the HTTP API")
        keys = tuple(search_keys or ())
        if len(keys) > MAX_KEYS:
            raise ValueError(f"workflow {name!r} declares over {MAX_KEYS} search keys")
        for key in keys:
            check_key(key)

        def decorate(cls: C) -> C:
            entrypoints = [
                attr for attr, value in vars(cls).items() if getattr(value, _ENTRYPOINT_MARK, False)
            ]
            if len(entrypoints) != 1:
                raise ValueError(f"workflow {name!r} needs exactly one @workflow.entrypoint")
            handlers = _handlers_of(cls, name)
            registry.add_workflow(
                WorkflowDefinition(
                    name=name,
                    cls=cls,
                    entrypoint_name=entrypoints[0],
                    execution_timeout=execution_timeout,
                    description=workflow_description,
                    display_name=workflow_display_name,
                    signals=handlers["signal"],
                    queries=handlers["query"],
                    updates=handlers["update"],
                    search_keys=keys,
                )
            )
            setattr(cls, _WORKFLOW_NAME_MARK, name)
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

    @staticmethod
    def signal(name: str | None = None, description: str | None = None) -> Callable[[F], F]:
        """Mark a method that receives the signal `name` (default: the method's name):
        input sent to a running execution, fire-and-forget. It returns nothing."""
        return _handler_decorator("signal", name, description)

    @staticmethod
    def query(name: str | None = None, description: str | None = None) -> Callable[[F], F]:
        """Mark a plain (not async) method that answers the query `name` from the
        workflow's state; it may not schedule activities, sleep or change state."""
        return _handler_decorator("query", name, description)

    @staticmethod
    def update(name: str | None = None, description: str | None = None) -> Callable[[F], F]:
        """Mark a method that handles the update `name`: it may change state, await
        activities and timers, and returns a value to the caller; raising
        `workflows.WorkflowError` rejects the update, and the run goes on."""
        return _handler_decorator("update", name, description)

    @staticmethod
    async def sleep(duration: timedelta | float, *, summary: str | None = None) -> None:
        """Wait `duration` (a timedelta, or seconds) on a durable timer: the run waits in
        Postgres, not in a worker, and resumes on whichever worker is free."""
        seconds = _seconds(duration, "sleep's duration")
        await runtime().start_timer(seconds, summary)

    @staticmethod
    async def execute_workflow(
        workflow: type | str,
        params: BaseModel | dict[str, Any] | None = None,
        execution_timeout: timedelta | None = None,
        execution_id: str | None = None,
        wait: bool = True,
        parent_close_policy: ParentClosePolicy | None = None,
    ) -> Any:
        """Start `workflow` (a class of @workflow.define, or its name) as a child of this
        one: an execution of its own, in this one's tree. `wait=True` returns its result
        (raising ChildWorkflowError if it did not complete); `wait=False` returns a
        ChildWorkflowHandle at once. When this workflow closes first, the child is
        terminated (`parent_close_policy`, default TERMINATE when waiting, ABANDON
        otherwise), asked to cancel, or left running."""
        rt = current_runtime.get()
        if rt is None:
            raise NotInWorkflow(
                "execute_workflow starts a child from workflow code; start executions from"
                " elsewhere through the HTTP API (the mistralai client)"
            )
        value = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
        if execution_id is not None and not _URL_SAFE.fullmatch(execution_id):
            raise ValueError(f"execution id {execution_id!r} must match [A-Za-z0-9._-]{{1,200}}")
        policy = parent_close_policy or ParentClosePolicy.UNSPECIFIED
        if policy is ParentClosePolicy.UNSPECIFIED:
            policy = ParentClosePolicy.TERMINATE if wait else ParentClosePolicy.ABANDON
        child_id, outcome = rt.start_child(
            _workflow_name(workflow),
            value,
            execution_id=execution_id,
            execution_timeout_seconds=(
                None
                if execution_timeout is None
                else _seconds(execution_timeout, "execution_timeout")
            ),
            parent_close_policy=policy.name,
        )
        handle = ChildWorkflowHandle(child_id, outcome)
        if not wait:
            return handle
        return await handle

    @staticmethod
    def continue_as_new(params: BaseModel | dict[str, Any]) -> NoReturn:
        """End this execution CONTINUED_AS_NEW and start a new one of the same workflow,
        with a new execution id, `params` as its input and an empty history; it stays in
        the same tree (root_execution_id), linked both ways. It does not return."""
        value = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
        runtime()  # only inside workflow code
        raise ContinueAsNew(value)

    @staticmethod
    def should_continue_as_new() -> bool:
        """Whether the history has grown long enough that the workflow should continue
        as new, before it meets the cap the engine enforces (51,200 events or 50 MB, as
        Mistral's). False outside workflow code."""
        rt = current_runtime.get()
        return rt is not None and rt.should_continue_as_new()

    @staticmethod
    async def add_search_keys(search_keys: Mapping[str, Any]) -> None:
        """Set searchable metadata on this execution (from workflow code or one of its
        activities): keys it holds are updated; it holds at most 20 (new keys past that
        are dropped). Values are stored as text (enums by value, dates in ISO 8601), None
        as null. Stored unencrypted, to be searchable. A bad key (empty, with ':', or
        starting 'internal.') or over 20 in one call raises a non-retryable
        ApplicationError."""
        await _change_search_keys(search_keys, [])

    @staticmethod
    async def delete_search_keys(keys: Sequence[str]) -> None:
        """Remove search keys from this execution; keys it does not hold are ignored."""
        if not isinstance(keys, list | tuple):
            raise WorkflowError(
                "delete_search_keys takes a list or tuple of keys", non_retryable=True
            )
        await _change_search_keys({}, list(keys))

    @staticmethod
    async def wait_condition(
        predicate: Callable[[], bool],
        timeout: timedelta | float | None = None,
        timeout_summary: str | None = None,
    ) -> None:
        """Wait until `predicate()` is true; it is checked each time the workflow's state
        may have changed (a signal, an update, an activity's outcome, a timer). With a
        `timeout`, raise asyncio.TimeoutError once it has passed first."""
        if predicate():
            return
        rt = runtime()
        condition = rt.condition(predicate)
        if timeout is None:
            await condition
            return
        timer = rt.start_timer(_seconds(timeout, "wait_condition's timeout"), timeout_summary)
        try:
            await asyncio.wait([condition, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whichever is left is not waited for any more: a pending timer is
            # cancelled in Postgres too.
            condition.cancel()
            timer.cancel()
        if condition.done() and not condition.cancelled():
            condition.result()  # a predicate that raised raises here
            return
        raise TimeoutError(f"the condition was not met within {timeout}")
