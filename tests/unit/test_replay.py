"""Replay against hand-written histories: matching, delivery, determinism. No I/O."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from app import workflows
from app.engine import events as ev
from app.engine.replay import (
    CompleteWorkflow,
    FailWorkflow,
    HistoryEvent,
    NonDeterminism,
    Replayer,
    ScheduleActivity,
    replay_view,
)
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


def scheduled(event_id: int, seq: int, name: str) -> HistoryEvent:
    return HistoryEvent(event_id, ev.ACTIVITY_TASK_SCHEDULED, {"seq": seq, "activity_name": name})


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
    outcome = replay("unit-chain", history)
    assert isinstance(outcome, NonDeterminism)
    assert "unit-shout" in outcome.message and "unit-double" in outcome.message


def test_fewer_commands_than_history_is_non_determinism() -> None:
    history = [
        started({"value": 3}),
        task_completed(2, 1),
        scheduled(3, 1, "unit-double"),
        scheduled(4, 2, "unit-double"),
    ]
    assert isinstance(replay("unit-chain", history), NonDeterminism)


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


def test_the_replay_view_replays_as_the_whole_history_does() -> None:
    # Events replay does not read, and attributes it does not read, around every kind
    # it does: a completed and a caught failed activity, then the new activation.
    noise = {"task_id": "wf-task-1", "note": "for people only"}
    history = [
        HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload(2), **noise}),
        HistoryEvent(2, ev.WORKFLOW_TASK_COMPLETED, {**task_completed(2, 1).attributes, **noise}),
        HistoryEvent(3, ev.ACTIVITY_TASK_SCHEDULED, {**scheduled(3, 1, "unit-double").attributes}),
        HistoryEvent(4, ev.ACTIVITY_TASK_STARTED, {"seq": 1, "attempt": 1}),
        HistoryEvent(5, ev.ACTIVITY_TASK_COMPLETED, {**completed(5, 1, 4).attributes, **noise}),
        HistoryEvent(6, ev.WORKFLOW_STATUS_CHANGED, {"from_status": "RUNNING"}),
    ]

    view = replay_view(history)

    assert [e.event_id for e in view] == [1, 2, 3, 5, 6]  # the newest is always kept
    assert all("task_id" not in e.attributes for e in view)
    assert replay("unit-chain", view) == replay("unit-chain", history)
    outcome = replay("unit-chain", view)
    assert [c.seq for c in outcome.commands] == [2]  # type: ignore[union-attr]

    caught = [
        started(None),
        task_completed(2, 1),
        scheduled(3, 1, "unit-shout"),
        HistoryEvent(4, ev.ACTIVITY_TASK_RETRYING, {"seq": 1, "attempt": 1}),
        failed(5, 1, "ValueError", "no"),
    ]
    assert replay("unit-catch", replay_view(caught)) == replay("unit-catch", caught)
    assert replay("unit-catch", replay_view(caught)).commands == [  # type: ignore[union-attr]
        CompleteWorkflow("caught ValueError: no")
    ]
