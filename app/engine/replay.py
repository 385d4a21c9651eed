"""Replaying a run's history through its workflow code, on a deterministic event loop.

History is a sequence of activations: each WORKFLOW_TASK_COMPLETED event closes one,
naming the newest event it consumed (`processed_event_id`) and the time it ran at. The
replayer feeds each activation the activity outcomes it consumed originally, runs the
workflow code until it blocks, and checks that the code asks for exactly the commands
recorded after that activation: the same activities, in the same order, with the same
input (by digest). The last activation is new: it takes every outcome not yet consumed,
and the commands it produces are what the workflow task records.

Replay raises when it cannot go on: NonDeterminismError when the code disagrees with
history, or whatever the code raised outside its entrypoint's own flow (an activity
called with arguments that do not fit it, or that JSON cannot hold). The workflow task
records either as its failure and is tried again later (workflow_tasks.py).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.engine.binding import bind_input, call_arguments, result_from_json
from app.engine.time_limits import TimeLimitExceeded
from app.errors import InvalidPayload, PayloadTooLarge
from app.model import events as ev
from app.model.events import HistoryEvent
from app.model.payloads import digest, encode, storable_text
from app.model.retry import RetryPolicy
from app.workflows.context import current_runtime
from app.workflows.errors import ActivityError
from app.workflows.registry import ActivityDefinition, Registry, WorkflowDefinition


@dataclass(frozen=True)
class ScheduleActivity:
    seq: int
    activity_name: str
    input: Any
    input_digest: str
    start_to_close_seconds: float
    retry_policy: RetryPolicy


@dataclass(frozen=True)
class CompleteWorkflow:
    result: Any


@dataclass(frozen=True)
class FailWorkflow:
    error_type: str
    message: str


Command = ScheduleActivity | CompleteWorkflow | FailWorkflow


@dataclass(frozen=True)
class _ActivityCall:
    """An activity the workflow code called, as it asked for it."""

    seq: int
    definition: ActivityDefinition
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def command(self) -> ScheduleActivity:
        """Its input encoded: raises TypeError for arguments that do not fit the
        activity, InvalidPayload or PayloadTooLarge for ones that cannot be stored."""
        definition = self.definition
        arguments = call_arguments(definition.fn, self.args, self.kwargs)
        data = encode(arguments, f"the input of activity {definition.name!r} (#{self.seq})")
        return ScheduleActivity(
            seq=self.seq,
            activity_name=definition.name,
            input=data,
            input_digest=digest(data),
            start_to_close_seconds=definition.start_to_close_timeout.total_seconds(),
            retry_policy=definition.retry_policy,
        )


_Produced = _ActivityCall | CompleteWorkflow | FailWorkflow


class NonDeterminismError(Exception):
    """The workflow code asked for other commands than history recorded."""


@dataclass(frozen=True)
class ActivationOutcome:
    """What one new activation asks for."""

    commands: list[Command]
    processed_event_id: int
    task_time: datetime


class DeterministicLoop(asyncio.AbstractEventLoop):
    """Just enough of an event loop to run asyncio tasks and futures, with no I/O or clock.

    Callbacks run in the order they were scheduled, so the same history always drives
    the workflow code through the same steps.
    """

    def __init__(self) -> None:
        self._ready: deque[asyncio.Handle] = deque()

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None, context: Any = None
    ) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def time(self) -> float:
        return 0.0

    def call_later(  # type: ignore[override]
        self, delay: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        raise RuntimeError(
            "asyncio timers are not replay-safe in workflow code; "
            "use an activity, or workflows.workflow.sleep() once durable timers land"
        )

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return self.call_later(when, callback)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # Pending tasks of a replay that stops are dropped on purpose; nothing to report.
        return None

    def run_until_blocked(self) -> None:
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                self._ready.popleft()._run()
        finally:
            asyncio.events._set_running_loop(previous)


@dataclass(frozen=True)
class _RecordedCall:
    seq: int
    activity_name: str
    # None in histories written before inputs were compared.
    input_digest: str | None
    input: Any


@dataclass
class _Activation:
    processed_event_id: int
    task_time: datetime
    recorded: list[_RecordedCall] = field(default_factory=list)


def _split_activations(history: list[HistoryEvent]) -> list[_Activation]:
    activations: list[_Activation] = []
    for event in history:
        attributes = event.attributes
        if event.event_type == ev.WORKFLOW_TASK_COMPLETED:
            activations.append(
                _Activation(
                    processed_event_id=int(attributes["processed_event_id"]),
                    task_time=datetime.fromisoformat(attributes["task_time"]),
                )
            )
        elif event.event_type == ev.ACTIVITY_TASK_SCHEDULED and activations:
            activations[-1].recorded.append(
                _RecordedCall(
                    seq=int(attributes["seq"]),
                    activity_name=str(attributes["activity_name"]),
                    input_digest=attributes.get("input_digest"),
                    input=attributes.get("input", {}).get("value"),
                )
            )
    return activations


class Replayer:
    """Replays one run; also the runtime that the SDK's workflow functions call."""

    def __init__(
        self,
        *,
        definition: WorkflowDefinition,
        registry: Registry,
        execution_id: str,
        random_seed: int,
        history: list[HistoryEvent],
    ) -> None:
        self.definition = definition
        self.registry = registry
        self.execution_id = execution_id
        self.rng = random.Random(random_seed)
        self.history = history
        self.loop = DeterministicLoop()  # type: ignore[abstract]
        self._task_time: datetime | None = None
        self._next_seq = 1
        self._pending: dict[int, tuple[asyncio.Future[Any], ActivityDefinition]] = {}
        self._commands: list[_Produced] = []

    def now(self) -> datetime:
        assert self._task_time is not None
        return self._task_time

    def schedule_activity(
        self, definition: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        seq = self._next_seq
        self._next_seq += 1
        future = self.loop.create_future()
        self._pending[seq] = (future, definition)
        self._commands.append(_ActivityCall(seq, definition, args, kwargs))
        return future

    def _deliver(self, event: HistoryEvent) -> None:
        seq = event.attributes.get("seq")
        if seq is None or int(seq) not in self._pending:
            return
        future, definition = self._pending.pop(int(seq))
        if event.event_type == ev.ACTIVITY_TASK_COMPLETED:
            try:
                future.set_result(
                    result_from_json(definition.fn, event.attributes["result"]["value"])
                )
            except Exception as exc:  # a result the annotation rejects fails the await
                future.set_exception(exc)
        else:
            failure = event.attributes["failure"]
            future.set_exception(
                ActivityError(
                    failure["message"],
                    activity_name=definition.name,
                    error_type=failure.get("type", "Exception"),
                    attempt=int(event.attributes.get("attempt", 1)),
                )
            )

    def _start(self) -> asyncio.Task[Any] | FailWorkflow:
        started = self.history[0]
        try:
            kwargs = bind_input(self.definition.entrypoint, started.attributes["input"]["value"])
        except Exception as exc:
            return FailWorkflow(type(exc).__name__, storable_text(str(exc)))
        token = current_runtime.set(self)
        try:
            instance = self.definition.cls()
            entrypoint = getattr(instance, self.definition.entrypoint_name)
            return self.loop.create_task(entrypoint(**kwargs))
        except Exception as exc:  # a constructor that raises fails the workflow
            return FailWorkflow(type(exc).__name__, storable_text(str(exc)))
        finally:
            current_runtime.reset(token)

    def _step(self, main: asyncio.Task[Any]) -> None:
        token = current_runtime.set(self)
        try:
            self.loop.run_until_blocked()
        finally:
            current_runtime.reset(token)
        if main.done():
            self._commands.append(_closing_command(main))

    def replay(self, *, now: datetime) -> ActivationOutcome:
        """Replay all recorded activations, then run the new one at time `now`."""
        recorded = _split_activations(self.history)
        outcomes = [e for e in self.history if e.event_type in ev.ACTIVITY_OUTCOMES]
        last_event_id = self.history[-1].event_id
        new = _Activation(processed_event_id=last_event_id, task_time=now)
        main: asyncio.Task[Any] | None = None
        consumed = 0
        for index, activation in enumerate([*recorded, new]):
            self._task_time = activation.task_time
            self._commands = []
            for event in outcomes:
                if consumed < event.event_id <= activation.processed_event_id:
                    self._deliver(event)
            consumed = activation.processed_event_id
            if main is None:
                started = self._start()
                if isinstance(started, FailWorkflow):
                    return ActivationOutcome([started], last_event_id, now)
                main = started
            self._step(main)
            commands = [c.command() if isinstance(c, _ActivityCall) else c for c in self._commands]
            if activation is new:
                return ActivationOutcome(commands, last_event_id, now)
            if not _as_recorded(commands, activation.recorded):
                raise NonDeterminismError(
                    f"workflow task {index + 1} replayed as {_describe(commands)}, "
                    f"but history recorded {_describe_recorded(activation.recorded)}"
                )
        raise AssertionError("the new activation always returns")


def _as_recorded(commands: list[Command], recorded: list[_RecordedCall]) -> bool:
    if len(commands) != len(recorded):
        return False
    for command, call in zip(commands, recorded, strict=True):
        if not isinstance(command, ScheduleActivity):
            return False
        if (command.seq, command.activity_name) != (call.seq, call.activity_name):
            return False
        if call.input_digest is not None and call.input_digest != command.input_digest:
            return False
    return True


def _closing_command(main: asyncio.Task[Any]) -> CompleteWorkflow | FailWorkflow:
    if main.cancelled():
        return FailWorkflow("CancelledError", "the workflow was cancelled")
    error = main.exception()
    if isinstance(error, TimeLimitExceeded):
        raise error  # the workflow task ran out of time, not the workflow
    if error is not None:
        return FailWorkflow(type(error).__name__, storable_text(str(error)))
    try:
        return CompleteWorkflow(encode(main.result(), "the workflow result"))
    except (InvalidPayload, PayloadTooLarge) as exc:
        return FailWorkflow(type(exc).__name__, exc.detail)


def _preview(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


PREVIEW_CHARS = 200


def _describe(commands: list[Command]) -> str:
    parts = []
    for c in commands:
        if isinstance(c, ScheduleActivity):
            parts.append(f"activity #{c.seq} {c.activity_name!r} {_preview(c.input)}")
        else:
            parts.append(type(c).__name__)
    return "[" + ", ".join(parts) + "]"


def _describe_recorded(recorded: list[_RecordedCall]) -> str:
    described = (f"activity #{c.seq} {c.activity_name!r} {_preview(c.input)}" for c in recorded)
    return "[" + ", ".join(described) + "]"
