"""Child workflows driven through the engine against Postgres (no broker, no worker)."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from app.engine.executions import get_execution, get_history, insert_execution
from app.engine.workflow_tasks import run_workflow_task
from app.model import events as ev
from app.storage.listing import RunFilter, list_runs
from app.workflows.registry import Registry
from tests.integration.test_continue_as_new import _drive


def _run(engine: Engine, registry: Registry, name: str, value: object) -> str:
    execution_id = f"children-{uuid.uuid4().hex}"
    record = insert_execution(
        engine, registry.workflow(name), execution_id=execution_id, input_value=value
    )
    _drive(engine, registry, run_workflow_task(engine, registry, record.run_id))
    return execution_id


def test_a_parent_gathers_three_children_each_an_execution_of_its_tree(
    engine: Engine, registry: Registry
) -> None:
    parent_id = _run(engine, registry, "child-gatherer", {"values": [2, 3, 4]})
    parent = get_execution(engine, parent_id)
    assert parent.status.value == "COMPLETED"
    assert parent.result == {"squares": [4, 9, 16]}
    history = get_history(engine, parent.run_id)
    started = [e for e in history if e.event_type == ev.CHILD_WORKFLOW_STARTED]
    completed = [e for e in history if e.event_type == ev.CHILD_WORKFLOW_COMPLETED]
    assert [e.attributes["seq"] for e in started] == [1, 2, 3]
    assert sorted(e.attributes["seq"] for e in completed) == [1, 2, 3]
    for start in started:
        child = get_execution(engine, start.attributes["execution_id"])
        assert child.parent_execution_id == parent_id
        assert child.root_execution_id == parent_id
        assert child.workflow_name == "square-child"
        assert str(child.run_id) == start.attributes["run_id"]
    tree = list_runs(engine, RunFilter(root_execution_id=parent_id)).runs
    assert len(tree) == 4


def test_a_child_s_failure_and_a_taken_id_reach_the_parent_as_errors_it_can_catch(
    engine: Engine, registry: Registry
) -> None:
    taken = _run(engine, registry, "sequential-sum", {"values": [1]})
    parent_id = _run(engine, registry, "child-failure-catcher", {"taken_id": taken})
    parent = get_execution(engine, parent_id)
    assert parent.status.value == "COMPLETED", parent.error
    assert parent.result == {
        "failed": ["FAILED", "ChildRefused", "nope"],
        "taken": ["NOT_STARTED", "AlreadyStarted"],
    }
