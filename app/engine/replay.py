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
import inspect
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.engine.binding import bind_input, call_arguments, result_from_json
from app.engine.time_limits import TimeLimitExceeded
from app.errors import InvalidPayload, PayloadTooLarge, QueryFailed
from app.model import events as ev
from app.model.events import HistoryEvent
from app.model.payloads import digest, encode, storable_text
from app.model.retry import RetryPolicy
from app.workflows.context import current_runtime
from app.workflows.errors import ActivityError, ChildWorkflowError, ContinueAsNew, WorkflowError
from app.workflows.registry import (
    ActivityDefinition,
    HandlerDefinition,
    Registry,
    WorkflowDefinition,
)

log = logging.getLogger(__name__)

# Default child execution ids are UUIDs derived from the parent's run and the command.
CHILD_ID_NAMESPACE = uuid.UUID("6f1c5a5e-3c1b-4b7e-9a52-1d2c3b4a5f60")


@dataclass(frozen=True)
class ScheduleActivity:
    seq: int
    activity_name: str
    input: Any
    input_digest: str
    start_to_close_seconds: float
    retry_policy: RetryPolicy
    heartbeat_timeout_seconds: float | None = None


@dataclass(frozen=True)
class StartTimer:
    seq: int
    seconds: float
    summary: str | None = None


@dataclass(frozen=True)
class CancelTimer:
    seq: int


@dataclass(frozen=True)
class CancelActivity:
    """An activity the code stopped waiting for (its awaiting task was cancelled)."""

    seq: int
    activity_name: str


@dataclass(frozen=True)
class CompleteUpdate:
    update_id: str
    update_name: str
    result: Any


@dataclass(frozen=True)
class RejectUpdate:
    update_id: str
    update_name: str
    error_type: str
    message: str


@dataclass(frozen=True)
class StartChildWorkflow:
    """Start a child execution (its input encoded); its outcome comes back by `seq`."""

    seq: int
    workflow_name: str
    execution_id: str
    input: Any
    input_digest: str
    parent_close_policy: str
    # None: the child workflow's own execution_timeout.
    execution_timeout_seconds: float | None = None


@dataclass(frozen=True)
class UpsertSearchKeys:
    """Set `values` and remove `deleted` in the execution's search keys."""

    values: dict[str, str | None]
    deleted: list[str]

    @property
    def digest(self) -> str:
        return digest({"values": self.values, "deleted": self.deleted})


@dataclass(frozen=True)
class RecordTaskEvent:
    """A custom task's lifecycle event (workflows.task): recorded as the workflow task
    runs it, never compared on replay (it changes nothing the code depends on)."""

    event_type: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class CompleteWorkflow:
    result: Any


@dataclass(frozen=True)
class FailWorkflow:
    error_type: str
    message: str


@dataclass(frozen=True)
class CancelWorkflow:
    """The code let a cancellation request end it."""

    message: str


@dataclass(frozen=True)
class ContinueAsNewWorkflow:
    """The code continued as new: a new execution takes over, with `input` (encoded)."""

    input: Any


Command = (
    ScheduleActivity
    | StartTimer
    | CancelTimer
    | CancelActivity
    | CompleteUpdate
    | RejectUpdate
    | StartChildWorkflow
    | UpsertSearchKeys
    | RecordTaskEvent
    | CompleteWorkflow
    | FailWorkflow
    | CancelWorkflow
    | ContinueAsNewWorkflow
)
ClosingCommand = CompleteWorkflow | FailWorkflow | CancelWorkflow | ContinueAsNewWorkflow
CLOSING_COMMANDS = (CompleteWorkflow, FailWorkflow, CancelWorkflow, ContinueAsNewWorkflow)


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
            heartbeat_timeout_seconds=(
                None
                if definition.heartbeat_timeout is None
                else definition.heartbeat_timeout.total_seconds()
            ),
        )


_Produced = _ActivityCall | Command


@dataclass(frozen=True)
class _Identity:
    """What replay compares of a command with the event that recorded it."""

    event_type: str
    key: str
    # None when not compared (histories recorded before inputs were).
    input_digest: str | None
    description: str


def _identity(command: Command) -> _Identity | None:
    """A command's identity, None for the closing ones (never compared: they end it)."""
    match command:
        case ScheduleActivity(seq=seq, activity_name=name, input=data):
            return _Identity(
                ev.ACTIVITY_TASK_SCHEDULED,
                f"{seq}:{name}",
                command.input_digest,
                f"activity #{seq} {name!r} {_preview(data)}",
            )
        case StartTimer(seq=seq, seconds=seconds):
            return _Identity(ev.TIMER_STARTED, str(seq), None, f"timer #{seq} ({seconds:g}s)")
        case CancelTimer(seq=seq):
            return _Identity(ev.TIMER_CANCELED, str(seq), None, f"cancel timer #{seq}")
        case CancelActivity(seq=seq, activity_name=name):
            return _Identity(
                ev.ACTIVITY_TASK_CANCEL_REQUESTED,
                f"{seq}:{name}",
                None,
                f"cancel activity #{seq} {name!r}",
            )
        case CompleteUpdate(update_id=update_id):
            return _Identity(
                ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED,
                update_id,
                None,
                f"complete update {update_id}",
            )
        case RejectUpdate(update_id=update_id):
            return _Identity(
                ev.WORKFLOW_EXECUTION_UPDATE_REJECTED, update_id, None, f"reject update {update_id}"
            )
        case UpsertSearchKeys(values=values, deleted=deleted):
            return _Identity(
                ev.SEARCH_KEYS_UPSERTED,
                command.digest,
                None,
                f"search keys {_preview({'values': values, 'deleted': deleted})}",
            )
        case StartChildWorkflow(seq=seq, workflow_name=name, input=data):
            return _Identity(
                ev.CHILD_WORKFLOW_STARTED,
                f"{seq}:{name}",
                command.input_digest,
                f"child workflow #{seq} {name!r} {_preview(data)}",
            )
    return None


def _recorded_identity(event: HistoryEvent) -> _Identity:
    a = event.attributes
    kind = event.event_type
    if kind == ev.ACTIVITY_TASK_SCHEDULED:
        seq, name = int(a["seq"]), str(a["activity_name"])
        return _Identity(
            kind,
            f"{seq}:{name}",
            a.get("input_digest"),
            f"activity #{seq} {name!r} {_preview(a.get('input', {}).get('value'))}",
        )
    if kind == ev.TIMER_STARTED:
        return _Identity(kind, str(a["seq"]), None, f"timer #{a['seq']} ({a['seconds']:g}s)")
    if kind == ev.TIMER_CANCELED:
        return _Identity(kind, str(a["seq"]), None, f"cancel timer #{a['seq']}")
    if kind == ev.ACTIVITY_TASK_CANCEL_REQUESTED:
        seq, name = int(a["seq"]), str(a["activity_name"])
        return _Identity(kind, f"{seq}:{name}", None, f"cancel activity #{seq} {name!r}")
    if kind == ev.SEARCH_KEYS_UPSERTED:
        change = {"values": a["values"], "deleted": a["deleted"]}
        return _Identity(kind, digest(change), None, f"search keys {_preview(change)}")
    if kind == ev.CHILD_WORKFLOW_STARTED:
        seq, name = int(a["seq"]), str(a["workflow_name"])
        return _Identity(
            kind,
            f"{seq}:{name}",
            a.get("input_digest"),
            f"child workflow #{seq} {name!r} {_preview(a.get('input', {}).get('value'))}",
        )
    verb = "complete" if kind == ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED else "reject"
    return _Identity(kind, str(a["update_id"]), None, f"{verb} update {a['update_id']}")


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
            "asyncio timers are not replay-safe in workflow code; use "
            "workflows.workflow.sleep() or wait_condition(..., timeout=), durable timers"
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


@dataclass
class _Activation:
    processed_event_id: int
    task_time: datetime
    # What should_continue_as_new() answered in it (recorded, so that replay agrees).
    suggest_continue_as_new: bool = False
    recorded: list[_Identity] = field(default_factory=list)


def _split_activations(history: list[HistoryEvent]) -> list[_Activation]:
    activations: list[_Activation] = []
    for event in history:
        if event.event_type == ev.WORKFLOW_TASK_COMPLETED:
            attributes = event.attributes
            activations.append(
                _Activation(
                    processed_event_id=int(attributes["processed_event_id"]),
                    task_time=datetime.fromisoformat(attributes["task_time"]),
                    suggest_continue_as_new=bool(attributes.get("suggest_continue_as_new")),
                )
            )
        elif event.event_type in ev.COMMANDS and activations:
            activations[-1].recorded.append(_recorded_identity(event))
    return activations


class _ReadOnly(Exception):
    """Raised by the runtime when a query handler asks for a command."""


class Replayer:
    """Replays one run; also the runtime that the SDK's workflow functions call.

    Each activation first applies the events it consumed, in history order (an
    activity's outcome, a timer that fired, a signal, an update, a cancellation
    request: one `_apply_*` method each), then runs the workflow code until every task
    of it waits on something not in history yet, re-checking the conditions it waits on.
    """

    def __init__(
        self,
        *,
        definition: WorkflowDefinition,
        registry: Registry,
        execution_id: str,
        random_seed: int,
        history: list[HistoryEvent],
        run_id: uuid.UUID | None = None,
    ) -> None:
        self.definition = definition
        self.registry = registry
        self.execution_id = execution_id
        self.run_id = run_id
        # The ids of the children this run started, by command: replay hands the code
        # the id recorded, whatever a new one would be.
        self._child_ids = {
            int(e.attributes["seq"]): str(e.attributes["execution_id"])
            for e in history
            if e.event_type == ev.CHILD_WORKFLOW_STARTED
        }
        self.rng = random.Random(random_seed)
        self.history = history
        self.loop = DeterministicLoop()  # type: ignore[abstract]
        self.instance: Any = None
        self._task_time: datetime | None = None
        self._suggest_continue_as_new = False
        self._next_seq = 1
        self._pending: dict[int, tuple[asyncio.Future[Any], ActivityDefinition]] = {}
        self._timers: dict[int, asyncio.Future[None]] = {}
        self._children: dict[int, tuple[asyncio.Future[Any], WorkflowDefinition]] = {}
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._handler_tasks: list[asyncio.Task[Any]] = []
        self._commands: list[_Produced] = []
        self._main: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._read_only = False

    # The runtime, as workflow code sees it (app/workflows/context.py).

    def now(self) -> datetime:
        assert self._task_time is not None
        return self._task_time

    def should_continue_as_new(self) -> bool:
        return self._suggest_continue_as_new

    def schedule_activity(
        self, definition: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        self._refuse_if_read_only(f"call activity {definition.name!r}")
        seq = self._take_seq()
        future = self.loop.create_future()
        self._pending[seq] = (future, definition)
        self._commands.append(_ActivityCall(seq, definition, args, kwargs))

        def on_done(done: asyncio.Future[Any]) -> None:
            if done.cancelled() and self._pending.pop(seq, None) is not None:
                self._commands.append(CancelActivity(seq, definition.name))

        future.add_done_callback(on_done)
        return future

    def start_timer(self, seconds: float, summary: str | None) -> asyncio.Future[None]:
        self._refuse_if_read_only("sleep")
        future: asyncio.Future[None] = self.loop.create_future()
        if seconds <= 0:
            future.set_result(None)
            return future
        seq = self._take_seq()
        self._timers[seq] = future
        self._commands.append(StartTimer(seq, seconds, summary))

        def on_done(done: asyncio.Future[None]) -> None:
            if done.cancelled() and self._timers.pop(seq, None) is not None:
                self._commands.append(CancelTimer(seq))

        future.add_done_callback(on_done)
        return future

    def start_child(
        self,
        workflow_name: str,
        input_value: Any,
        *,
        execution_id: str | None,
        execution_timeout_seconds: float | None,
        parent_close_policy: str,
    ) -> tuple[str, asyncio.Future[Any]]:
        self._refuse_if_read_only(f"start workflow {workflow_name!r}")
        definition = self.registry.workflows.get(workflow_name)
        if definition is None:
            raise WorkflowError(
                f"workflow {workflow_name!r} is not registered on this worker",
                type="UnknownWorkflow",
            )
        data = encode(input_value, f"the input of child workflow {workflow_name!r}")
        seq = self._take_seq()
        child_id = self._child_ids.get(seq) or execution_id or self._child_id(seq)
        future = self.loop.create_future()
        self._children[seq] = (future, definition)
        self._commands.append(
            StartChildWorkflow(
                seq=seq,
                workflow_name=workflow_name,
                execution_id=child_id,
                input=data,
                input_digest=digest(data),
                parent_close_policy=parent_close_policy,
                execution_timeout_seconds=execution_timeout_seconds,
            )
        )
        return child_id, future

    def upsert_search_keys(
        self, values: dict[str, str | None], deleted: list[str]
    ) -> asyncio.Future[None]:
        self._refuse_if_read_only("change search keys")
        self._commands.append(UpsertSearchKeys(values, deleted))
        # Recorded with the workflow task's other commands, in its transaction.
        done: asyncio.Future[None] = self.loop.create_future()
        done.set_result(None)
        return done

    def record_task_event(
        self, event_type: str, attributes: dict[str, Any]
    ) -> asyncio.Future[None]:
        self._refuse_if_read_only("report a task")
        self._commands.append(RecordTaskEvent(event_type, attributes))
        done: asyncio.Future[None] = self.loop.create_future()
        done.set_result(None)
        return done

    def _child_id(self, seq: int) -> str:
        """A new child's default id: the same for every replay of this run, and another
        in a run that a reset started (so that it never meets the old run's child)."""
        return uuid.uuid5(CHILD_ID_NAMESPACE, f"{self.run_id}:{seq}").hex

    def condition(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        self._refuse_if_read_only("wait")
        future: asyncio.Future[None] = self.loop.create_future()
        self._conditions.append((predicate, future))
        return future

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _refuse_if_read_only(self, what: str) -> None:
        if self._read_only:
            raise _ReadOnly(f"a query may not {what}")

    # Applying history, one kind of event each.

    def _apply(self, event: HistoryEvent) -> None:
        kind = event.event_type
        if kind in ev.ACTIVITY_OUTCOMES:
            self._apply_activity_outcome(event)
        elif kind in ev.CHILD_OUTCOMES:
            self._apply_child_outcome(event)
        elif kind == ev.TIMER_FIRED:
            self._apply_timer_fired(event)
        elif kind == ev.WORKFLOW_EXECUTION_SIGNALED:
            self._apply_signal(event)
        elif kind == ev.WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            self._apply_update(event)
        elif kind == ev.WORKFLOW_EXECUTION_CANCEL_REQUESTED:
            self._apply_cancel_requested()

    def _apply_activity_outcome(self, event: HistoryEvent) -> None:
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

    def _apply_child_outcome(self, event: HistoryEvent) -> None:
        a = event.attributes
        found = self._children.pop(int(a["seq"]), None)
        if found is None:
            return
        future, definition = found
        if future.done():
            return
        if event.event_type == ev.CHILD_WORKFLOW_COMPLETED:
            try:
                future.set_result(result_from_json(definition.entrypoint, a["result"]["value"]))
            except Exception as exc:  # a result the annotation rejects fails the await
                future.set_exception(exc)
            return
        failure = a["failure"]
        future.set_exception(
            ChildWorkflowError(
                failure.get("message", ""),
                workflow_name=definition.name,
                execution_id=str(a["execution_id"]),
                # No status: it never started (its id was taken).
                status=str(a.get("status") or "NOT_STARTED"),
                error_type=str(failure.get("type", "Exception")),
            )
        )

    def _apply_timer_fired(self, event: HistoryEvent) -> None:
        future = self._timers.pop(int(event.attributes["seq"]), None)
        if future is not None and not future.done():
            future.set_result(None)

    def _apply_signal(self, event: HistoryEvent) -> None:
        handler = self.definition.signals.get(str(event.attributes["signal_name"]))
        if handler is None:
            # Validated when sent: only a deploy that removed the handler gets here.
            log.warning(
                "execution %s: signal %r has no handler; dropped",
                self.execution_id,
                event.attributes["signal_name"],
            )
            return
        self._handler_tasks.append(
            self.loop.create_task(self._call_handler(handler, event.attributes["input"]["value"]))
        )

    def _apply_update(self, event: HistoryEvent) -> None:
        attributes = event.attributes
        update_id, name = str(attributes["update_id"]), str(attributes["update_name"])
        handler = self.definition.updates.get(name)
        if handler is None:
            self._commands.append(
                RejectUpdate(update_id, name, "UnknownUpdate", f"no update handler {name!r}")
            )
            return
        task = self.loop.create_task(self._call_handler(handler, attributes["input"]["value"]))

        def on_done(done: asyncio.Task[Any]) -> None:
            if done.cancelled():
                self._commands.append(
                    RejectUpdate(update_id, name, "CancelledError", "the update was cancelled")
                )
                return
            error = done.exception()
            if isinstance(error, TimeLimitExceeded):
                return  # the workflow task ran out of time: it fails as a whole
            if error is not None:
                error_type = getattr(error, "type", None) or type(error).__name__
                self._commands.append(
                    RejectUpdate(update_id, name, str(error_type), storable_text(str(error)))
                )
                return
            try:
                result = encode(done.result(), f"the result of update {name!r}")
            except (InvalidPayload, PayloadTooLarge) as exc:
                self._commands.append(RejectUpdate(update_id, name, type(exc).__name__, exc.detail))
                return
            self._commands.append(CompleteUpdate(update_id, name, result))

        task.add_done_callback(on_done)

    def _apply_cancel_requested(self) -> None:
        self._cancel_requested = True
        if self._main is not None and not self._main.done():
            self._main.cancel()

    async def _call_handler(self, handler: HandlerDefinition, payload: Any) -> Any:
        kwargs = bind_input(handler.fn, payload)
        result = getattr(self.instance, handler.method_name)(**kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    # Running the code.

    def _instantiate(self) -> FailWorkflow | None:
        try:
            self.instance = self.definition.cls()
        except Exception as exc:  # a constructor that raises fails the workflow
            return FailWorkflow(type(exc).__name__, storable_text(str(exc)))
        return None

    def _start(self) -> FailWorkflow | None:
        started = self.history[0]
        try:
            kwargs = bind_input(self.definition.entrypoint, started.attributes["input"]["value"])
        except Exception as exc:
            return FailWorkflow(type(exc).__name__, storable_text(str(exc)))
        failed = self._instantiate()
        if failed is not None:
            return failed
        entrypoint = getattr(self.instance, self.definition.entrypoint_name)
        self._main = self.loop.create_task(entrypoint(**kwargs))
        return None

    def _run_until_blocked(self) -> None:
        """Run every ready task; then resolve the conditions that now hold, and again,
        until nothing changes."""
        while True:
            self.loop.run_until_blocked()
            waiting = []
            changed = False
            for predicate, future in self._conditions:
                if future.done():
                    continue
                try:
                    holds = predicate()
                except Exception as exc:
                    future.set_exception(exc)
                    changed = True
                    continue
                if holds:
                    future.set_result(None)
                    changed = True
                else:
                    waiting.append((predicate, future))
            self._conditions = waiting
            if not changed:
                return

    def _closing(self) -> ClosingCommand | None:
        main = self._main
        for task in self._handler_tasks:
            # A signal handler that fails fails the workflow, as an entrypoint would.
            if task.done() and not task.cancelled() and task.exception() is not None:
                error = task.exception()
                if isinstance(error, TimeLimitExceeded):
                    raise error
                assert error is not None
                return FailWorkflow(_error_type(error), storable_text(str(error)))
        if main is None or not main.done():
            return None
        return _closing_command(main, cancel_requested=self._cancel_requested)

    def _activate(self, activation: _Activation, events: list[HistoryEvent], consumed: int) -> None:
        self._task_time = activation.task_time
        self._suggest_continue_as_new = activation.suggest_continue_as_new
        self._commands = []
        for event in events:
            if consumed < event.event_id <= activation.processed_event_id:
                self._apply(event)

    def replay(self, *, now: datetime, suggest_continue_as_new: bool = False) -> ActivationOutcome:
        """Replay all recorded activations, then run the new one at time `now` (in which
        should_continue_as_new() answers `suggest_continue_as_new`)."""
        last_event_id = self.history[-1].event_id
        new = _Activation(
            processed_event_id=last_event_id,
            task_time=now,
            suggest_continue_as_new=suggest_continue_as_new,
        )
        token = current_runtime.set(self)
        try:
            failed = self._replay_recorded(then=new)
            if failed is not None:
                return ActivationOutcome([failed], last_event_id, now)
            commands = [c.command() if isinstance(c, _ActivityCall) else c for c in self._commands]
            return ActivationOutcome(commands, last_event_id, now)
        finally:
            self._discard_pending()
            current_runtime.reset(token)

    def _discard_pending(self) -> None:
        """Close the code's coroutines still waiting, while this runtime is current.

        Left pending, they would be closed whenever the garbage collector gets to them,
        and their `finally` blocks and context managers' exits (a custom task's, say)
        would then run in whatever code runs at that moment (another replay, an
        activity), outside this replay. Closed here, what they ask for comes to this
        runtime, after its outcome was taken, and is dropped."""
        for task in asyncio.all_tasks(self.loop):
            coroutine = task.get_coro()
            try:
                if inspect.iscoroutine(coroutine):
                    coroutine.close()
            except Exception:  # it awaited again, or raised, while closing
                log.debug("a discarded coroutine of %s did not close cleanly", self.execution_id)
        self._handler_tasks.clear()

    def query(self, name: str, payload: Any) -> Any:
        """Replay the activations recorded so far and answer the query `name` from the
        state they leave; writes nothing. Raises QueryFailed if the handler raises."""
        handler = self.definition.queries[name]
        token = current_runtime.set(self)
        try:
            self._replay_recorded(then=None)
            if self.instance is None and self._instantiate() is not None:
                raise QueryFailed("the workflow's constructor raised")
            self._read_only = True
            try:
                kwargs = bind_input(handler.fn, payload)
                return getattr(self.instance, handler.method_name)(**kwargs)
            except _ReadOnly as exc:
                raise QueryFailed(str(exc)) from None
            except Exception as exc:
                raise QueryFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._discard_pending()
            current_runtime.reset(token)

    def _replay_recorded(self, *, then: _Activation | None) -> FailWorkflow | None:
        """Replay every recorded activation, then `then` if given (its commands are left
        in self._commands); a FailWorkflow when the workflow cannot even start."""
        recorded = _split_activations(self.history)
        delivered = [e for e in self.history if e.event_type in ev.DELIVERED]
        consumed = 0
        activations = [*recorded, then] if then is not None else recorded
        for index, activation in enumerate(activations):
            if self._main is None:
                self._task_time = activation.task_time
                failed = self._start()
                if failed is not None:
                    return failed
            self._activate(activation, delivered, consumed)
            consumed = activation.processed_event_id
            self._run_until_blocked()
            closing = self._closing()
            if closing is not None:
                self._commands.append(closing)
            if activation is then:
                return None
            commands = [c.command() if isinstance(c, _ActivityCall) else c for c in self._commands]
            if not _as_recorded(commands, activation.recorded):
                raise NonDeterminismError(
                    f"workflow task {index + 1} replayed as {_describe(commands)}, "
                    f"but history recorded {_describe_recorded(activation.recorded)}"
                )
            if closing is not None:
                break
        return None


def _as_recorded(commands: list[Command], recorded: list[_Identity]) -> bool:
    identities = [i for i in map(_identity, commands) if i is not None]
    if len(identities) != len(recorded):
        return False
    for made, was in zip(identities, recorded, strict=True):
        if (made.event_type, made.key) != (was.event_type, was.key):
            return False
        if was.input_digest is not None and was.input_digest != made.input_digest:
            return False
    return True


def _closing_command(main: asyncio.Task[Any], *, cancel_requested: bool) -> ClosingCommand:
    if main.cancelled():
        if cancel_requested:
            return CancelWorkflow("the workflow was cancelled")
        return FailWorkflow("CancelledError", "the workflow was cancelled by its own code")
    error = main.exception()
    if isinstance(error, TimeLimitExceeded):
        raise error  # the workflow task ran out of time, not the workflow
    if isinstance(error, asyncio.CancelledError) and cancel_requested:
        return CancelWorkflow("the workflow was cancelled")
    if isinstance(error, ContinueAsNew):
        try:
            return ContinueAsNewWorkflow(encode(error.input_value, "continue_as_new's input"))
        except (InvalidPayload, PayloadTooLarge) as exc:
            return FailWorkflow(type(exc).__name__, exc.detail)
    if error is not None:
        return FailWorkflow(_error_type(error), storable_text(str(error)))
    try:
        return CompleteWorkflow(encode(main.result(), "the workflow result"))
    except (InvalidPayload, PayloadTooLarge) as exc:
        return FailWorkflow(type(exc).__name__, exc.detail)


def _error_type(error: BaseException) -> str:
    """A WorkflowError's own `type` (what the code named it), else the class's name."""
    named = getattr(error, "type", None)
    return named if isinstance(named, str) and named else type(error).__name__


def _preview(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


PREVIEW_CHARS = 200


def _describe(commands: list[Command]) -> str:
    parts = []
    for command in commands:
        identity = _identity(command)
        parts.append(identity.description if identity is not None else type(command).__name__)
    return "[" + ", ".join(parts) + "]"


def _describe_recorded(recorded: list[_Identity]) -> str:
    return "[" + ", ".join(i.description for i in recorded) + "]"
