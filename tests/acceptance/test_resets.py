"""Reset through the real `mistralai` SDK, on the Procfile's processes with default
settings: a new run under the same execution id takes over the history up to a
WORKFLOW_TASK_COMPLETED event; the old run stays readable as it was; one run is open."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError

from tests.acceptance.conftest import Stack, history, start, types, wait_for_end
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def _client(stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.base_url)


def _task_completions(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["event_id"]) for e in events if e["event_type"] == "WORKFLOW_TASK_COMPLETED"]


def _runs(client: Mistral, execution_id: str) -> list[Any]:
    listed = client.workflows.runs.list_runs(root_execution_id=execution_id, page_size=100)
    return list(listed.result.executions)


def _started_seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["attributes"]["seq"] for e in events if e["event_type"] == "ACTIVITY_TASK_STARTED"]


def _held(http: httpx.Client, tmp_path: Path) -> tuple[dict[str, Any], int]:
    """A `held` execution waiting in its activity, and its one reset point."""
    started = start(http, "held", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")
    (point,) = _task_completions(history(http, started["execution_id"]))
    return started, point


def test_resetting_a_completed_execution_runs_it_again_from_the_point_in_a_new_run(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    started = start(http, "sequential-sum", [1, 2, 3])
    execution_id = started["execution_id"]
    first = wait_for_end(http, execution_id)
    assert first["status"] == "COMPLETED"
    old_history = history(http, execution_id)
    # The second workflow task: activity 1 ('add' 0+1) has completed, and stays so.
    point = _task_completions(old_history)[1]

    client.workflows.executions.reset_workflow(
        execution_id=execution_id, event_id=point, reason="recount"
    )

    record = wait_for_end(http, execution_id)
    assert record["status"] == "COMPLETED" and record["result"] == {"total": 6}
    assert record["run_id"] != first["run_id"]
    new_history = history(http, execution_id)
    # Copied as it was before the point, then the reset, then the run going on.
    assert new_history[: point - 1] == [
        {**e, "workflow_run_id": record["run_id"]} for e in old_history[: point - 1]
    ]
    assert new_history[point - 1]["event_type"] == "WORKFLOW_EXECUTION_RESET"
    assert new_history[point - 1]["attributes"]["reason"] == "recount"
    # Activity 1's success is recorded before the point: it never runs again.
    assert _started_seqs(new_history).count(1) == 1
    assert sorted(set(_started_seqs(new_history))) == [1, 2, 3]

    # The old run is readable, as it was; both are listed under the execution.
    old = client.workflows.runs.get_run(run_id=first["run_id"])
    assert old.status == "COMPLETED" and old.result == {"total": 6}
    old_events = client.workflows.runs.get_run_history(run_id=first["run_id"])["events"]
    assert old_events == old_history
    runs = _runs(client, execution_id)
    assert sorted(r.run_id for r in runs) == sorted([first["run_id"], record["run_id"]])
    assert all(r.execution_id == execution_id for r in runs)


def test_resetting_a_running_execution_terminates_its_run_and_keeps_one_open(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    client = _client(stack)
    started, point = _held(http, tmp_path)
    execution_id = started["execution_id"]
    (tmp_path / "started").unlink()

    client.workflows.executions.reset_workflow(
        execution_id=execution_id, event_id=point, reason="operator asked"
    )

    old = client.workflows.runs.get_run(run_id=started["run_id"])
    assert old.status == "TERMINATED" and old.end_time is not None
    old_events = client.workflows.runs.get_run_history(run_id=started["run_id"])["events"]
    assert old_events[-1]["event_type"] == "WORKFLOW_EXECUTION_TERMINATED"
    assert old_events[-1]["attributes"]["reason"] == "operator asked"
    current = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert current.status == "RUNNING" and current.run_id != started["run_id"]
    open_runs = [r for r in _runs(client, execution_id) if r.end_time is None]
    assert [r.run_id for r in open_runs] == [current.run_id]
    # The new run runs the activity again (its success was never recorded).
    wait_until(lambda: (tmp_path / "started").exists(), what="the new run's activity")
    (tmp_path / "release").write_text("go")
    record = wait_for_end(http, execution_id)
    assert record["status"] == "COMPLETED" and record["result"] == "released"
    assert record["run_id"] == current.run_id


def test_an_invalid_reset_point_is_a_422_naming_the_valid_ones_and_changes_nothing(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    started = start(http, "sequential-sum", [5])
    execution_id = started["execution_id"]
    wait_for_end(http, execution_id)
    points = _task_completions(history(http, execution_id))
    for event_id in (1, 3, 10_000):
        reply = http.post(
            f"/v1/workflows/executions/{execution_id}/reset", json={"event_id": event_id}
        )
        assert reply.status_code == 422
        body = reply.json()
        assert body["code"] == "WF_1001"
        (problem,) = body["detail"]
        assert problem["loc"] == ["body", "event_id"] and problem["input"] == event_id
        assert problem["ctx"] == {"valid_event_ids": points}
        assert str(points) in problem["msg"]
    with pytest.raises(HTTPValidationError) as raised:
        client.workflows.executions.reset_workflow(execution_id=execution_id, event_id=1)
    assert str(points) in raised.value.data.detail[0].msg
    assert [r.run_id for r in _runs(client, execution_id)] == [started["run_id"]]
    missing = http.post("/v1/workflows/executions/nope/reset", json={"event_id": 2})
    assert missing.status_code == 404
    assert http.post(f"/v1/workflows/executions/{execution_id}/reset", json={}).status_code == 422


def test_two_racing_resets_leave_exactly_one_open_run(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    client = _client(stack)
    started, point = _held(http, tmp_path)
    execution_id = started["execution_id"]
    gate = threading.Barrier(2)
    answers: list[int] = []

    def reset() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as own:
            gate.wait()
            reply = own.post(
                f"/v1/workflows/executions/{execution_id}/reset",
                json={"event_id": point, "reason": f"racer {uuid.uuid4().hex[:6]}"},
            )
            answers.append(reply.status_code)

    racers = [threading.Thread(target=reset) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    # They ran one after the other: the second found a new run, in which that event
    # is no longer a completed workflow task.
    assert sorted(answers) == [204, 422]
    runs = _runs(client, execution_id)
    assert len(runs) == 2
    assert [r.status for r in runs if r.end_time is None] == ["RUNNING"]
    assert client.workflows.runs.get_run(run_id=started["run_id"]).status == "TERMINATED"
    (tmp_path / "release").write_text("go")
    assert wait_for_end(http, execution_id)["status"] == "COMPLETED"
    assert "WORKFLOW_EXECUTION_RESET" in types(history(http, execution_id))


def _received(http: httpx.Client, execution_id: str) -> list[int]:
    reply = http.post(f"/v1/workflows/executions/{execution_id}/queries", json={"name": "received"})
    result: list[int] = reply.json()["result"]
    return result


@pytest.mark.parametrize("exclude", [False, True])
def test_signals_and_updates_after_the_point_are_applied_again_unless_excluded(
    stack: Stack, http: httpx.Client, exclude: bool
) -> None:
    client = _client(stack)
    execution_id = start(http, "signal-counter", {"expected": 4})["execution_id"]
    path = f"/v1/workflows/executions/{execution_id}"
    http.post(path + "/signals", json={"name": "add", "input": {"number": 1}})
    wait_until(lambda: _received(http, execution_id) == [1], what="the first signal")
    # The reset point: the workflow task that handled the first signal.
    point = _task_completions(history(http, execution_id))[-1]
    http.post(path + "/signals", json={"name": "add", "input": {"number": 2}})
    update = http.post(path + "/updates", json={"name": "add-and-double", "input": {"number": 3}})
    assert update.json()["result"] == 6
    assert _received(http, execution_id) == [1, 2, 3]

    client.workflows.executions.reset_workflow(
        execution_id=execution_id,
        event_id=point,
        exclude_signals=exclude,
        exclude_updates=exclude,
    )

    expected = [1] if exclude else [1, 2, 3]
    wait_until(
        lambda: _received(http, execution_id) == expected,
        what=f"the new run to hold {expected}",
    )
    events = history(http, execution_id)
    marker = next(e for e in events if e["event_type"] == "WORKFLOW_EXECUTION_RESET")
    assert len(marker["attributes"]["reapplied_event_ids"]) == (0 if exclude else 2)
    for number in (7, 8, 9)[: 4 - len(expected)]:
        http.post(path + "/signals", json={"name": "add", "input": {"number": number}})
    record = wait_for_end(http, execution_id)
    assert record["status"] == "COMPLETED"
    assert record["result"] == [*expected, 7, 8, 9][:4]
