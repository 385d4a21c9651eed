"""Replay against hand-written histories: matching, delivery, determinism. No I/O."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import workflows
from app.engine.replay import (
    CompleteWorkflow,
    FailWorkflow,
    NonDeterminismError,
    Replayer,
    ScheduleActivity,
)
from app.errors import InvalidPayload
from app.model import events as ev
from app.model.events import HistoryEvent
from app.model.payloads import digest
from app.workflows.registry import registry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@workflows.activity(start_to_close_timeout=timedelta(seconds=5), name="unit-double")
def double(value: int) -> int:
    return 2 * value


@workflows.activity(name="unit-shout")
async def shout(text: str) -> str:
    return text.upper()


@workflows.workflow.define(name="unit-chain")
class Chain:
    @workflows.workflow.entrypoint
    async def run(self, value: int) -> int:
        first: int = await double(value)
        if first > 10:
            return first
        second: int = await double(first)
        return second


@workflows.workflow.define(name="unit-fan-out")
class FanOut:
    @workflows.workflow.entrypoint
    async def run(self, values: list[int]) -> list[int]:
        return list(await asyncio.gather(*(double(v) for v in values)))


@workflows.workflow.define(name="unit-catch")
class Catch:
    @workflows.workflow.entrypoint
    async def run(self) -> str:
        try:
            await shout("x")
        except workflows.ActivityError as error:
            return f"caught {error.cause.type}: {error.cause.message}"
        return "no error"


@workflows.workflow.define(name="unit-raise")
class Raise:
    @workflows.workflow.entrypoint
    async def run(self) -> None:
        raise ValueError("bad input")


@workflows.workflow.define(name="unit-clock")
class Clock:
    @workflows.workflow.entrypoint
    async def run(self) -> dict[str, Any]:
        before = {
            "now": workflows.workflow.now().isoformat(),
            "uuid": str(workflows.workflow.uuid4()),
            "random": workflows.workflow.random().random(),
            "execution_id": workflows.get_execution_id(),
        }
        await shout("tick")
        return {"before": before, "after_uuid": str(workflows.workflow.uuid4())}


def started(value: Any) -> HistoryEvent:
    return HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload(value)})


def task_completed(event_id: int, processed: int, at: datetime = T0) -> HistoryEvent:
    return HistoryEvent(
        event_id,
        ev.WORKFLOW_TASK_COMPLETED,
        {"processed_event_id": processed, "task_time": at.isoformat()},
    )


def scheduled(event_id: int, seq: int, name: str, value: Any = None) -> HistoryEvent:
    """As recorded; with the call's input (`value`), or without, as before inputs were
    compared."""
    attributes: dict[str, Any] = {"seq": seq, "activity_name": name}
    if value is not None:
        attributes.update(input=ev.payload(value), input_digest=digest(value))
    return HistoryEvent(event_id, ev.ACTIVITY_TASK_SCHEDULED, attributes)


def completed(event_id: int, seq: int, result: Any) -> HistoryEvent:
    return HistoryEvent(
        event_id, ev.ACTIVITY_TASK_COMPLETED, {"seq": seq, "result": ev.payload(result)}
    )


def failed(event_id: int, seq: int, error_type: str, message: str) -> HistoryEvent:
    return HistoryEvent(
        event_id,
        ev.ACTIVITY_TASK_FAILED,
        {"seq": seq, "attempt": 3, "failure": ev.failure(error_type, message)},
    )


def replay(name: str, history: list[HistoryEvent], now: datetime = T0) -> Any:
    return Replayer(
        definition=registry.workflow(name),
        registry=registry,
        execution_id="exec-1",
        random_seed=42,
        history=history,
    ).replay(now=now)


def test_first_activation_schedules_the_first_activity() -> None:
    outcome = replay("unit-chain", [started({"value": 3})])
    assert outcome.commands == [
        ScheduleActivity(
            seq=1,
            activity_name="unit-double",
            input={"value": 3},
            input_digest=digest({"value": 3}),
            start_to_close_seconds=5.0,
            retry_policy=registry.activities["unit-double"].retry_policy,
        )
    ]
    assert outcome.processed_event_id == 1


def test_recorded_results_resolve_and_the_code_moves_on() -> None:
    history = [started({"value": 3}), task_completed(2, 1), scheduled(3, 1, "unit-double")]
    history.append(completed(4, 1, 6))
    outcome = replay("unit-chain", history)
    assert [(c.seq, c.input) for c in outcome.commands] == [(2, {"value": 6})]
    history += [task_completed(5, 4), scheduled(6, 2, "unit-double"), completed(7, 2, 12)]
    assert replay("unit-chain", history).commands == [CompleteWorkflow(12)]


def test_branch_taken_from_a_result_completes_early() -> None:
    history = [started({"value": 8}), task_completed(2, 1), scheduled(3, 1, "unit-double")]
    history.append(completed(4, 1, 16))
    assert replay("unit-chain", history).commands == [CompleteWorkflow(16)]


def test_outcomes_after_the_processed_mark_wait_for_the_new_activation() -> None:
    # The second task ran before event 5 arrived: replay must not feed it event 5 early.
    history = [
        started({"values": [1, 2]}),
        task_completed(2, 1),
        scheduled(3, 1, "unit-double"),
        scheduled(4, 2, "unit-double"),
        completed(5, 1, 2),
        task_completed(6, 4),
        completed(7, 2, 4),
    ]
    assert replay("unit-fan-out", history).commands == [CompleteWorkflow([2, 4])]


def test_gather_schedules_all_activities_in_one_activation() -> None:
    outcome = replay("unit-fan-out", [started({"values": [1, 2, 3]})])
    assert [(c.seq, c.input) for c in outcome.commands] == [
        (1, {"value": 1}),
        (2, {"value": 2}),
        (3, {"value": 3}),
    ]


def test_a_different_command_than_history_is_non_determinism() -> None:
    history = [started({"value": 3}), task_completed(2, 1), scheduled(3, 1, "unit-shout")]
    with pytest.raises(NonDeterminismError, match="unit-shout") as raised:
        replay("unit-chain", history)
    assert "unit-double" in str(raised.value)


def test_fewer_commands_than_history_is_non_determinism() -> None:
    history = [
        started({"value": 3}),
        task_completed(2, 1),
        scheduled(3, 1, "unit-double"),
        scheduled(4, 2, "unit-double"),
    ]
    with pytest.raises(NonDeterminismError):
        replay("unit-chain", history)


def test_the_same_activity_called_with_other_input_is_non_determinism() -> None:
    # The code now asks for double(3); history recorded double(4): a result recorded
    # for one call must never be handed to another.
    history = [
        started({"value": 3}),
        task_completed(2, 1),
        scheduled(3, 1, "unit-double", {"value": 4}),
        completed(4, 1, 8),
    ]
    with pytest.raises(NonDeterminismError) as raised:
        replay("unit-chain", history)
    message = str(raised.value)
    assert '{"value": 3}' in message and '{"value": 4}' in message
    history[2] = scheduled(3, 1, "unit-double", {"value": 3})
    (command,) = replay("unit-chain", history).commands
    assert isinstance(command, ScheduleActivity) and command.input == {"value": 8}


def test_histories_recorded_without_input_digests_still_replay() -> None:
    history = [
        started({"value": 3}),
        task_completed(2, 1),
        scheduled(3, 1, "unit-double"),
        completed(4, 1, 6),
    ]
    assert [c.seq for c in replay("unit-chain", history).commands] == [2]  # type: ignore[union-attr]


@workflows.workflow.define(name="unit-bad-call")
class BadCall:
    @workflows.workflow.entrypoint
    async def run(self, kind: str) -> Any:
        if kind == "arity":
            return await double(1, 2)  # type: ignore[call-arg]
        if kind == "not-json":
            return await double(object())  # type: ignore[arg-type]
        return await double(float("nan"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "error"),
    [("arity", TypeError), ("not-json", InvalidPayload), ("nan", InvalidPayload)],
)
def test_an_activity_call_that_cannot_be_recorded_raises_out_of_replay(
    kind: str, error: type[Exception]
) -> None:
    # Not a failure of the workflow (its code would see it): of the workflow task, which
    # is recorded and tried again until a fixed deploy.
    with pytest.raises(error):
        replay("unit-bad-call", [started({"kind": kind})])


@workflows.workflow.define(name="unit-nan-result")
class NanResult:
    @workflows.workflow.entrypoint
    async def run(self) -> float:
        return float("nan")


def test_a_result_postgres_cannot_store_fails_the_workflow() -> None:
    (command,) = replay("unit-nan-result", [started(None)]).commands
    assert isinstance(command, FailWorkflow) and command.error_type == "InvalidPayload"


def test_an_activity_failure_is_an_exception_the_code_can_catch() -> None:
    history = [started(None), task_completed(2, 1), scheduled(3, 1, "unit-shout")]
    history.append(failed(4, 1, "ConnectionError", "down"))
    assert replay("unit-catch", history).commands == [
        CompleteWorkflow("caught ConnectionError: down")
    ]


def test_an_exception_from_the_code_fails_the_workflow_with_its_type() -> None:
    assert replay("unit-raise", [started(None)]).commands == [
        FailWorkflow("ValueError", "bad input")
    ]


def test_invalid_recorded_input_fails_the_workflow() -> None:
    outcome = replay("unit-chain", [started({"value": "three"})])
    assert isinstance(outcome.commands[0], FailWorkflow)
    assert outcome.commands[0].error_type == "ValidationError"


def test_now_uuid_and_random_replay_to_the_values_first_produced() -> None:
    first = replay("unit-clock", [started(None)], now=T0)
    recorded_input = first.commands[0].input
    later = T0 + timedelta(minutes=5)
    history = [
        started(None),
        task_completed(2, 1, at=T0),
        scheduled(3, 1, "unit-shout"),
        completed(4, 1, "TICK"),
    ]
    final = replay("unit-clock", history, now=later).commands[0]
    assert isinstance(final, CompleteWorkflow)
    assert final.result["before"]["now"] == T0.isoformat()
    assert final.result["before"]["execution_id"] == "exec-1"
    assert recorded_input == {"text": "tick"}
    again = replay("unit-clock", history, now=later + timedelta(hours=1)).commands[0]
    assert again == final
    assert final.result["after_uuid"] != final.result["before"]["uuid"]


def test_activities_called_outside_a_workflow_are_plain_functions() -> None:
    assert double(4) == 8
    assert asyncio.run(shout("hi")) == "HI"
    assert workflows.get_execution_id() is None


@workflows.workflow.define(name="unit-asyncio-sleep")
class AsyncioSleep:
    @workflows.workflow.entrypoint
    async def run(self) -> None:
        await asyncio.sleep(5)


def test_asyncio_timers_fail_the_workflow_with_a_clear_message() -> None:
    (command,) = replay("unit-asyncio-sleep", [started(None)]).commands
    assert isinstance(command, FailWorkflow)
    assert command.error_type == "RuntimeError" and "not replay-safe" in command.message
    assert "workflows.workflow.sleep()" in command.message  # what to use instead


@workflows.workflow.define(name="unit-task-block")
class TaskBlock:
    @workflows.workflow.entrypoint
    async def run(self, value: int) -> int:
        async with workflows.task("doubling", state={"value": value}):
            result: int = await double(value)
        return result


def test_code_a_replay_leaves_waiting_is_closed_with_it_and_reports_nothing_later() -> None:
    """A replay stops where the code waits; that code is closed with the replay, so its
    exits (a custom task's) never run later in someone else's context, as an activity's
    (where they would write into that activity's run)."""
    written: list[str] = []
    token = workflows.context.current_task_events.set(lambda kind, _: written.append(kind))
    try:
        replayer = Replayer(
            definition=registry.workflow("unit-task-block"),
            registry=registry,
            execution_id="exec-1",
            random_seed=42,
            history=[started({"value": 3})],
        )
        outcome = replayer.replay(now=T0)
        kinds = [type(c).__name__ for c in outcome.commands]
        assert kinds == ["RecordTaskEvent", "ScheduleActivity"]
        main = replayer._main
        assert main is not None and main.get_coro().cr_frame is None  # type: ignore[union-attr]
        del replayer, main, outcome
        gc.collect()
    finally:
        workflows.context.current_task_events.reset(token)
    assert written == []
