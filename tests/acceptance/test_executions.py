"""Executions through the real API, worker and beat processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.acceptance.conftest import (
    MAX_PAYLOAD_BYTES,
    Stack,
    execution_id,
    history,
    start,
    types,
    wait_for_end,
)
from tests.support import alive, wait_until


def statuses(events_json: list[dict[str, Any]]) -> list[str]:
    """The status sequence history tells: changes, then the closing event."""
    seen = ["RUNNING"]
    closing = {
        "WORKFLOW_EXECUTION_COMPLETED": "COMPLETED",
        "WORKFLOW_EXECUTION_FAILED": "FAILED",
        "WORKFLOW_EXECUTION_TIMED_OUT": "TIMED_OUT",
    }
    for event in events_json:
        if event["event_type"] == "WORKFLOW_STATUS_CHANGED":
            seen.append(event["attributes"]["to_status"])
        elif event["event_type"] in closing:
            seen.append(closing[event["event_type"]])
    return seen


def test_execute_answers_running_with_a_url_safe_generated_id(http: httpx.Client) -> None:
    reply = http.post("/v1/workflows/sequential-sum/execute", json={"input": {"values": [2]}})
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "RUNNING"
    assert body["end_time"] is None and body["result"] is None
    assert body["root_execution_id"] == body["execution_id"]
    assert body["execution_id"].isalnum()
    assert wait_for_end(http, body["execution_id"])["result"] == {"total": 2}


def test_sequential_workflow_completes_with_its_history(http: httpx.Client) -> None:
    started = start(http, "sequential-sum", {"values": [1, 2, 3]})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"total": 6}
    assert record["run_id"] == started["run_id"]
    events_json = history(http, started["execution_id"])
    assert [int(e["event_id"]) for e in events_json] == list(range(1, len(events_json) + 1))
    assert types(events_json)[0] == "WORKFLOW_EXECUTION_STARTED"
    assert types(events_json)[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    assert types(events_json).count("ACTIVITY_TASK_SCHEDULED") == 3
    assert types(events_json).count("ACTIVITY_TASK_COMPLETED") == 3
    assert types(events_json).count("WORKFLOW_TASK_COMPLETED") == 4
    completed = [e for e in events_json if e["event_type"] == "ACTIVITY_TASK_COMPLETED"]
    assert [e["attributes"]["result"]["value"] for e in completed] == [1, 3, 6]
    for event in events_json:
        assert event["workflow_exec_id"] == started["execution_id"]
        assert event["workflow_run_id"] == started["run_id"]
        assert event["workflow_name"] == "sequential-sum"
        assert isinstance(event["event_timestamp"], int) and event["event_timestamp"] > 10**18
    stamps = [e["event_timestamp"] for e in events_json]
    assert stamps == sorted(stamps)


def test_parallel_activities_run_as_one_group(http: httpx.Client) -> None:
    started = start(http, "fan-out-squares", {"values": [1, 2, 3, 4]})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"squares": [1, 4, 9, 16], "sum": 30}
    events_json = history(http, started["execution_id"])
    # All four were scheduled by the first workflow task, before any completed.
    first_completion = types(events_json).index("ACTIVITY_TASK_COMPLETED")
    assert types(events_json)[:first_completion].count("ACTIVITY_TASK_SCHEDULED") == 4


def test_a_retrying_activity_inside_a_group_still_wakes_the_workflow(
    http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "fan-out-with-retry", {"folder": str(tmp_path)})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED"
    assert record["result"] == ["succeeded on call 2", 9, 16]
    assert statuses(history(http, started["execution_id"])) == [
        "RUNNING",
        "RETRYING_AFTER_ERROR",
        "RUNNING",
        "COMPLETED",
    ]


def test_branching_and_looping_on_activity_results(http: httpx.Client) -> None:
    big = start(http, "order-approval", {"order_id": "o-big", "amount": 300})
    small = start(http, "order-approval", {"order_id": "o-small", "amount": 20})
    big_record = wait_for_end(http, big["execution_id"])
    small_record = wait_for_end(http, small["execution_id"])
    assert big_record["result"] == {
        "receipt": {"order_id": "o-big", "charged": 300, "approved_by": "manager"},
        "doubling_rounds": 2,
        "total": 1200,
    }
    assert small_record["result"]["receipt"]["approved_by"] == "auto"
    assert small_record["result"]["doubling_rounds"] == 6
    assert small_record["result"]["total"] == 1280


def test_retry_then_success(http: httpx.Client, tmp_path: Path) -> None:
    started = start(http, "flaky", {"folder": str(tmp_path), "failures": 2})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED"
    assert record["result"] == "succeeded on call 3"
    events_json = history(http, started["execution_id"])
    retrying = [e for e in events_json if e["event_type"] == "ACTIVITY_TASK_RETRYING"]
    assert [e["attributes"]["attempt"] for e in retrying] == [1, 2]
    assert retrying[0]["attributes"]["failure"]["type"] == "ConnectionError"
    assert "upstream down on call 1" in retrying[0]["attributes"]["failure"]["message"]
    assert statuses(events_json) == ["RUNNING", "RETRYING_AFTER_ERROR", "RUNNING", "COMPLETED"]


def test_retries_exhausted_fail_the_execution(http: httpx.Client, tmp_path: Path) -> None:
    started = start(http, "flaky", {"folder": str(tmp_path), "failures": 10})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "ActivityError"
    assert "after 4 attempt(s)" in record["error"]["message"]
    events_json = history(http, started["execution_id"])
    assert types(events_json).count("ACTIVITY_TASK_STARTED") == 4
    assert types(events_json).count("ACTIVITY_TASK_FAILED") == 1
    assert statuses(events_json) == ["RUNNING", "RETRYING_AFTER_ERROR", "FAILED"]
    failed = events_json[-1]
    assert failed["event_type"] == "WORKFLOW_EXECUTION_FAILED"
    assert failed["attributes"]["failure"] == record["error"]
    assert len((tmp_path / "calls").read_text().splitlines()) == 4


def test_a_caught_activity_failure_completes(http: httpx.Client, tmp_path: Path) -> None:
    started = start(http, "caught-failure", {"folder": str(tmp_path)})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED"
    assert record["result"]["caught"] == "ConnectionError"
    assert statuses(history(http, started["execution_id"]))[-2:] == ["RUNNING", "COMPLETED"]


def test_workflow_code_that_raises_fails_with_type_and_message(http: httpx.Client) -> None:
    started = start(http, "raises", {"reason": "the order is invalid"})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "FAILED"
    assert record["error"] == {"type": "ValueError", "message": "the order is invalid"}
    last = history(http, started["execution_id"])[-1]
    assert last["event_type"] == "WORKFLOW_EXECUTION_FAILED"
    assert last["attributes"]["failure"]["message"] == "the order is invalid"


def test_execution_timeout_closes_the_run_and_stops_its_activity(
    http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "short-deadline", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")
    pid = int((tmp_path / "started").read_text())
    record = wait_for_end(http, started["execution_id"], timeout=20)
    assert record["status"] == "TIMED_OUT"
    # Its attempt was stopped with the run: the process running it is gone, replaced.
    wait_until(lambda: not alive(pid), timeout=15, what=f"process {pid} to be stopped")
    (tmp_path / "release").write_text("go")
    events_json = history(http, started["execution_id"])
    assert types(events_json)[-1] == "WORKFLOW_EXECUTION_TIMED_OUT"
    assert "ACTIVITY_TASK_COMPLETED" not in types(events_json)
    assert not (tmp_path / "finished").exists()
    assert http.get(f"/v1/workflows/executions/{started['execution_id']}").json() == record


def test_now_uuid_random_and_execution_id_are_replay_safe(http: httpx.Client) -> None:
    started = start(http, "replay-safe", None)
    record = wait_for_end(http, started["execution_id"])
    # `first` was computed again by the final replay; `recorded` went through history.
    assert record["result"]["first"] == record["result"]["recorded"]
    assert record["result"]["first"]["execution_id"] == started["execution_id"]


def test_wait_for_result_returns_the_short_form(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"input": {"values": [5, 5]}, "wait_for_result": True, "timeout_seconds": 30},
    )
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"workflow_name", "execution_id", "result"}
    assert body["result"] == {"total": 10}


def test_wait_for_result_that_fails_returns_the_record(http: httpx.Client) -> None:
    reply = http.post(
        "/v1/workflows/raises/execute",
        json={"input": {"reason": "no"}, "wait_for_result": True, "timeout_seconds": 30},
    )
    assert reply.status_code == 200
    assert reply.json()["status"] == "FAILED"


def test_duplicate_execution_id_is_409_and_changes_nothing(
    stack: Stack, http: httpx.Client
) -> None:
    started = start(http, "sequential-sum", {"values": [1]})
    wait_for_end(http, started["execution_id"])
    before = http.get(f"/v1/workflows/executions/{started['execution_id']}").json()
    rows_before = stack.row_counts()
    reply = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"execution_id": started["execution_id"], "input": {"values": [100]}},
    )
    assert reply.status_code == 409
    assert reply.json()["code"] == "WF_1101"
    assert stack.row_counts() == rows_before
    assert http.get(f"/v1/workflows/executions/{started['execution_id']}").json() == before


def test_unknown_workflow_is_404_and_writes_nothing(stack: Stack, http: httpx.Client) -> None:
    rows_before = stack.row_counts()
    reply = http.post("/v1/workflows/no-such-workflow/execute", json={"input": {}})
    assert reply.status_code == 404
    assert reply.json()["code"] == "WF_1100"
    assert http.get("/v1/workflows/no-such-workflow").status_code == 404
    assert stack.row_counts() == rows_before


def test_bad_input_is_422_in_fastapi_shape_and_writes_nothing(
    stack: Stack, http: httpx.Client
) -> None:
    rows_before = stack.row_counts()
    reply = http.post(
        "/v1/workflows/order-approval/execute",
        json={"execution_id": execution_id(), "input": {"order_id": "o", "amount": "lots"}},
    )
    assert reply.status_code == 422
    (problem,) = reply.json()["detail"]
    assert problem["loc"] == ["body", "input", "amount"]
    assert problem["type"] == "int_parsing"
    assert isinstance(problem["msg"], str)
    malformed = http.post(
        "/v1/workflows/order-approval/execute",
        content=b'{"input": ',
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 422
    bad_id = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"execution_id": "has spaces/and slashes", "input": {"values": []}},
    )
    assert bad_id.status_code == 422
    assert bad_id.json()["detail"][0]["loc"] == ["body", "execution_id"]
    reserved = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"execution_id": "cancel", "input": {"values": []}},
    )
    assert reserved.status_code == 422
    assert stack.row_counts() == rows_before


def test_oversized_input_is_413_and_writes_nothing(stack: Stack, http: httpx.Client) -> None:
    rows_before = stack.row_counts()
    reply = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"input": {"values": [1] * MAX_PAYLOAD_BYTES}},
    )
    assert reply.status_code == 413
    assert reply.json()["code"] == "WF_1002"
    assert stack.row_counts() == rows_before


def test_an_oversized_activity_result_fails_without_retrying(http: httpx.Client) -> None:
    started = start(http, "big-result", {"where": "activity", "size": MAX_PAYLOAD_BYTES})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "FAILED"
    events_json = history(http, started["execution_id"])
    (failed,) = [e for e in events_json if e["event_type"] == "ACTIVITY_TASK_FAILED"]
    assert failed["attributes"]["failure"]["type"] == "PayloadTooLarge"
    assert failed["attributes"]["attempt"] == 1


def test_an_oversized_workflow_result_fails_the_execution(http: httpx.Client) -> None:
    started = start(http, "big-result", {"where": "workflow", "size": MAX_PAYLOAD_BYTES})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "PayloadTooLarge"
    assert record["result"] is None


def test_unknown_execution_is_404(http: httpx.Client) -> None:
    for path in ("/v1/workflows/executions/nope", "/v1/workflows/executions/nope/history"):
        reply = http.get(path)
        assert reply.status_code == 404
        assert reply.json() == {"detail": "Execution 'nope' not found", "code": "WF_1100"}


def test_workflows_are_listed_and_described(http: httpx.Client) -> None:
    listing = http.get("/v1/workflows").json()
    names = [w["name"] for w in listing["workflows"]]
    assert names == sorted(names) and "sequential-sum" in names
    assert listing["next_cursor"] is None
    one = http.get("/v1/workflows/sequential-sum").json()["workflow"]
    assert one["name"] == "sequential-sum" and one["type"] == "code" and one["active"] is True
