"""Continue-as-new and the history cap, driven through the engine against Postgres."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from app.engine.executions import get_execution, get_history
from app.engine.interactions import signal
from app.errors import ExecutionClosed
from app.model import events as ev
from app.settings import get_settings
from app.workflows.registry import Registry
from tests.integration.driving import start_and_drive


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
    first = start_and_drive(engine, registry, "counter", {"count": 0, "target": 3})
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
    first = start_and_drive(engine, registry, "until-suggested", {"done": 0, "total": 12})
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
    execution_id = start_and_drive(engine, registry, "never-continues", {"total": 50})
    record = get_execution(engine, execution_id)
    assert record.status.value == "FAILED"
    assert record.error is not None and record.error["type"] == "HistoryLimitExceeded"
    assert "40" in record.error["message"]
    assert len(get_history(engine, record.run_id)) <= 42
