"""Signal, query and update handlers: validated at import, replayed deterministically."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import workflows
from app.engine.replay import (
    CancelTimer,
    CompleteUpdate,
    CompleteWorkflow,
    NonDeterminismError,
    Replayer,
    StartTimer,
)
from app.errors import InvalidDefinition
from app.model import events as ev
from app.model.events import HistoryEvent
from app.workflows.registry import Registry

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _define(name: str, *handlers: Any) -> type:
    """A workflow class named `name` holding `handlers` as methods, registered apart."""
    namespace: dict[str, Any] = {f"handler_{i}": h for i, h in enumerate(handlers)}

    async def run(self: Any) -> None:
        return None

    namespace["run"] = workflows.workflow.entrypoint(run)
    return workflows.workflow.define(name=name)(type(name.title(), (), namespace))


def test_an_async_query_is_refused_at_import() -> None:
    async def status(self: Any) -> int:
        return 1

    with pytest.raises(InvalidDefinition, match="plain def"):
        workflows.workflow.query(name="status")(status)


def test_a_query_or_update_must_say_what_it_returns() -> None:
    def status(self: Any) -> None:
        return None

    async def change(self: Any, value: int) -> None:
        return None

    with pytest.raises(InvalidDefinition, match="must declare what it returns"):
        workflows.workflow.query()(status)
    with pytest.raises(InvalidDefinition, match="must declare what it returns"):
        workflows.workflow.update()(change)


def test_a_signal_that_returns_a_value_is_refused_at_import() -> None:
    async def approve(self: Any) -> bool:
        return True

    with pytest.raises(InvalidDefinition, match="signals return nothing"):
        workflows.workflow.signal(name="approve")(approve)


def test_two_handlers_of_one_name_are_refused_naming_both() -> None:
    async def first(self: Any) -> None:
        return None

    async def second(self: Any, extra: int) -> None:
        return None

    one = workflows.workflow.signal(name="go")(first)
    two = workflows.workflow.signal(name="go")(second)
    with pytest.raises(InvalidDefinition, match="two signal handlers named 'go'"):
        _define("unit-duplicate-handlers", one, two)


def test_handlers_are_registered_by_name_with_their_methods() -> None:
    async def approve(self: Any, who: str) -> None:
        return None

    def status(self: Any) -> dict[str, Any]:
        return {}

    cls = _define(
        "unit-handlers",
        workflows.workflow.signal(name="approve", description="say yes")(approve),
        workflows.workflow.query()(status),
    )
    from app.workflows.registry import registry

    definition = registry.workflow("unit-handlers")
    assert definition.cls is cls
    assert definition.signals["approve"].description == "say yes"
    assert definition.signals["approve"].method_name == "handler_0"
    assert list(definition.queries) == ["status"]


@workflows.workflow.define(name="unit-waiter")
class Waiter:
    def __init__(self) -> None:
        self.approved = False
        self.limit = 1

    @workflows.workflow.entrypoint
    async def run(self) -> dict[str, Any]:
        try:
            await workflows.workflow.wait_condition(lambda: self.approved, timeout=10)
        except TimeoutError:
            return {"approved": False, "limit": self.limit}
        await workflows.workflow.sleep(timedelta(seconds=5))
        return {"approved": True, "limit": self.limit}

    @workflows.workflow.signal(name="approve")
    async def approve(self) -> None:
        self.approved = True

    @workflows.workflow.update(name="limit")
    def set_limit(self, limit: int) -> int:
        self.limit = limit
        return limit


def _task_completed(event_id: int, processed: int) -> HistoryEvent:
    return HistoryEvent(
        event_id,
        ev.WORKFLOW_TASK_COMPLETED,
        {"processed_event_id": processed, "task_time": T0.isoformat()},
    )


def _replay(history: list[HistoryEvent], registry: Registry) -> list[Any]:
    return (
        Replayer(
            definition=registry.workflow("unit-waiter"),
            registry=registry,
            execution_id="e",
            random_seed=1,
            history=history,
        )
        .replay(now=T0)
        .commands
    )


def _registry() -> Registry:
    from app.workflows.registry import registry

    return registry


def test_a_signal_meets_the_condition_cancels_its_timer_and_a_sleep_starts() -> None:
    started = HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload({})})
    assert _replay([started], _registry()) == [StartTimer(1, 10.0, None)]
    history = [
        started,
        _task_completed(2, 1),
        HistoryEvent(3, ev.TIMER_STARTED, {"seq": 1, "seconds": 10.0}),
        HistoryEvent(
            4,
            ev.WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            {"update_id": "u1", "update_name": "limit", "input": ev.payload({"limit": 3})},
        ),
        HistoryEvent(
            5, ev.WORKFLOW_EXECUTION_SIGNALED, {"signal_name": "approve", "input": ev.payload(None)}
        ),
    ]
    # The cancellation is seen once the code has moved on (a done callback): recorded
    # after the sleep it went on to, the same way on every replay.
    assert _replay(history, _registry()) == [
        CompleteUpdate("u1", "limit", 3),
        StartTimer(2, 5.0, None),
        CancelTimer(1),
    ]
    history += [
        _task_completed(6, 5),
        HistoryEvent(7, ev.WORKFLOW_EXECUTION_UPDATE_COMPLETED, {"update_id": "u1"}),
        HistoryEvent(8, ev.TIMER_STARTED, {"seq": 2, "seconds": 5.0}),
        HistoryEvent(9, ev.TIMER_CANCELED, {"seq": 1}),
        HistoryEvent(10, ev.TIMER_FIRED, {"seq": 2}),
    ]
    assert _replay(history, _registry()) == [CompleteWorkflow({"approved": True, "limit": 3})]


def test_a_timer_that_fires_first_times_the_condition_out() -> None:
    history = [
        HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload({})}),
        _task_completed(2, 1),
        HistoryEvent(3, ev.TIMER_STARTED, {"seq": 1, "seconds": 10.0}),
        HistoryEvent(4, ev.TIMER_FIRED, {"seq": 1}),
    ]
    assert _replay(history, _registry()) == [CompleteWorkflow({"approved": False, "limit": 1})]


def test_a_history_without_the_timer_the_code_starts_is_non_determinism() -> None:
    history = [
        HistoryEvent(1, ev.WORKFLOW_EXECUTION_STARTED, {"input": ev.payload({})}),
        _task_completed(2, 1),
    ]
    with pytest.raises(NonDeterminismError, match="timer #1"):
        _replay(history, _registry())
