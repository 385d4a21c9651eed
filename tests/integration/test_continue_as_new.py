"""Continue-as-new and the history cap, driven through the engine against Postgres."""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.engine.activities.claim import Attempt, claim
from app.engine.activities.outcome import record_outcome
from app.engine.activities.run import run_attempt
from app.engine.dispatch import FollowUp
from app.engine.executions import get_execution, get_history, insert_execution
from app.engine.interactions import signal
from app.engine.workflow_tasks import run_workflow_task
from app.errors import ExecutionClosed
from app.model import events as ev
from app.settings import get_settings
from app.workflows.registry import Registry


def _drive(engine: Engine, registry: Registry, first: FollowUp) -> None:
    """Do all the work follow-ups ask for, as workers would, until none is left."""
    pending = deque([first])
    while pending:
        follow_up = pending.popleft()
        for dispatch in follow_up.dispatches:
            for activity in dispatch.activities:
                attempt = claim(
                    engine,
                    registry,
                    activity.run_id,
                    activity.seq,
                    activity_name=activity.activity_name,
                    task_id=uuid.uuid4().hex,
                )
                if isinstance(attempt, Attempt):
                    pending.append(record_outcome(engine, registry, attempt, run_attempt(attempt)))
            pending.append(run_workflow_task(engine, registry, dispatch.run_id))


def _start_and_drive(engine: Engine, registry: Registry, name: str, value: object) -> str:
    execution_id = f"can-{uuid.uuid4().hex}"
    record = insert_execution(
        engine, registry.workflow(name), execution_id=execution_id, input_value=value
    )
    _drive(engine, registry, run_workflow_task(engine, registry, record.run_id))
    return execution_id


def _chain(engine: Engine, execution_id: str) -> list[str]:
    chain = [execution_id]
    while (successor := get_execution(engine, chain[-1]).continued_as_execution_id) is not None:
        chain.append(successor)
    return chain


@pytest.fixture
def history_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CHAINLINE_HISTORY_SUGGEST_EVENTS", "20")
    monkeypatch.setenv("CHAINLINE_HISTORY_EVENT_LIMIT", "40")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_counter_continues_as_new_twice_then_completes_linked_both_ways(
    engine: Engine, registry: Registry
) -> None:
    first = _start_and_drive(engine, registry, "counter", {"count": 0, "target": 3})
    chain = _chain(engine, first)
    assert len(chain) == 3
    records = [get_execution(engine, e) for e in chain]
    assert [r.status.value for r in records] == ["CONTINUED_AS_NEW"] * 2 + ["COMPLETED"]
    assert records[-1].result == {"count": 3}
    assert {r.root_execution_id for r in records} == {first}
    assert [r.continued_from_execution_id for r in records] == [None, *chain[:2]]
    assert [r.continued_from_run_id for r in records] == [None, *(r.run_id for r in records[:2])]
    assert {r.first_execution_run_id for r in records} == {records[0].run_id}
    for counted, (record, successor) in enumerate(itertools.pairwise(records), 1):
        closing = get_history(engine, record.run_id)[-1]
        assert closing.event_type == ev.WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        assert closing.attributes["new_execution_run_id"] == str(successor.run_id)
        assert closing.attributes["input"]["value"] == {"count": counted, "target": 3}
        started = get_history(engine, successor.run_id)[0]
        assert started.attributes["input"]["value"] == closing.attributes["input"]["value"]
    # Its predecessors take no more signals, and say where they went.
    with pytest.raises(ExecutionClosed, match=chain[1]):
        signal(engine, chain[0], "anything", None)


@pytest.mark.usefixtures("history_limits")
def test_should_continue_as_new_turns_true_before_the_cap_and_replays_the_same(
    engine: Engine, registry: Registry
) -> None:
    first = _start_and_drive(engine, registry, "until-suggested", {"done": 0, "total": 12})
    records = [get_execution(engine, e) for e in _chain(engine, first)]
    assert len(records) >= 2
    assert records[-1].status.value == "COMPLETED" and records[-1].result == {"done": 12}
    for record in records:
        history = get_history(engine, record.run_id)
        assert len(history) < 40, "no run reached the cap"
        assert not any(e.event_type == ev.WORKFLOW_TASK_FAILED for e in history)
    suggested = [
        e
        for e in get_history(engine, records[0].run_id)
        if e.attributes.get("suggest_continue_as_new")
    ]
    assert suggested and all(e.event_id >= 20 for e in suggested)


@pytest.mark.usefixtures("history_limits")
def test_a_run_that_reaches_the_history_cap_fails_saying_so(
    engine: Engine, registry: Registry
) -> None:
    execution_id = _start_and_drive(engine, registry, "never-continues", {"total": 50})
    record = get_execution(engine, execution_id)
    assert record.status.value == "FAILED"
    assert record.error is not None and record.error["type"] == "HistoryLimitExceeded"
    assert "40" in record.error["message"]
    assert len(get_history(engine, record.run_id)) <= 42
