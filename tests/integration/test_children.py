"""Child workflows driven through the engine against Postgres (no broker, no worker)."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine

from app.engine.dispatch import FollowUp
from app.engine.executions import get_execution, get_history, insert_execution
from app.engine.resets import reset
from app.engine.workflow_tasks import run_workflow_task
from app.model import events as ev
from app.storage.listing import RunFilter, list_runs
from app.workflows.registry import Registry
from tests.integration.driving import drive, start_and_drive


def test_a_parent_gathers_three_children_each_an_execution_of_its_tree(
    engine: Engine, registry: Registry
) -> None:
    parent_id = start_and_drive(engine, registry, "child-gatherer", {"values": [2, 3, 4]})
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
    taken = start_and_drive(engine, registry, "sequential-sum", {"values": [1]})
    parent_id = start_and_drive(engine, registry, "child-failure-catcher", {"taken_id": taken})
    parent = get_execution(engine, parent_id)
    assert parent.status.value == "COMPLETED", parent.error
    assert parent.result == {
        "failed": ["FAILED", "ChildRefused", "nope"],
        "taken": ["NOT_STARTED", "AlreadyStarted"],
    }


def test_a_reset_parent_gets_the_outcomes_of_children_that_closed_after_its_point(
    engine: Engine, registry: Registry
) -> None:
    parent_id = f"children-{uuid.uuid4().hex}"
    record = insert_execution(
        engine,
        registry.workflow("child-gatherer"),
        execution_id=parent_id,
        input_value={"values": [2, 3, 4]},
    )
    first_task = run_workflow_task(engine, registry, record.run_id)
    assert len(first_task.dispatches) == 3
    # One child ends, and the parent's next workflow task sees it; then the others.
    drive(engine, registry, FollowUp("one child", dispatches=first_task.dispatches[:1]))
    drive(engine, registry, FollowUp("the others", dispatches=first_task.dispatches[1:]))
    before = get_execution(engine, parent_id)
    assert before.result == {"squares": [4, 9, 16]}
    history = get_history(engine, before.run_id)
    points = [e.event_id for e in history if e.event_type == ev.WORKFLOW_TASK_COMPLETED]
    point = points[1]
    kept = [e for e in history if e.event_id < point]
    assert sum(e.event_type == ev.CHILD_WORKFLOW_STARTED for e in kept) == 3
    assert sum(e.event_type in ev.CHILD_OUTCOMES for e in kept) == 1

    _, follow_up = reset(engine, parent_id, point, reason="again")
    drive(engine, registry, follow_up)

    after = get_execution(engine, parent_id)
    assert after.run_id != before.run_id
    assert after.status.value == "COMPLETED" and after.result == {"squares": [4, 9, 16]}
    new_history = get_history(engine, after.run_id)
    assert not any(
        e.event_type == ev.CHILD_WORKFLOW_STARTED and e.event_id >= point for e in new_history
    ), "no child started again"
    tree = list_runs(engine, RunFilter(root_execution_id=parent_id)).runs
    assert len(tree) == 5  # the parent's two runs, its three children
