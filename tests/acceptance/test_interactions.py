"""Talking to live executions through the public `mistralai` SDK, on the Procfile's
processes with default settings: signals, queries, updates, durable timers, cancel and
terminate, and every refusal, which changes nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import HTTPValidationError, SDKError

from tests.acceptance.conftest import Stack, history, start, types, wait_for_end
from tests.support import alive, wait_until
from tests.workflows import calls


@pytest.fixture
def client(stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.base_url)


def _wait_for_event(http: httpx.Client, execution_id: str, event_type: str) -> None:
    wait_until(
        lambda: event_type in types(history(http, execution_id)),
        timeout=30,
        what=f"{event_type} in {execution_id}",
    )


def _saga(http: httpx.Client, folder: Path, wait_seconds: float = 120) -> str:
    """An approval saga that has reserved and waits for its decision."""
    started = start(
        http,
        "approval-saga",
        {"folder": str(folder), "item": "book", "wait_seconds": wait_seconds},
    )
    _wait_for_event(http, started["execution_id"], "TIMER_STARTED")
    return str(started["execution_id"])


def test_a_saga_is_queried_updated_and_signalled_while_it_waits(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    execution_id = _saga(http, tmp_path)
    executions = client.workflows.executions
    status = executions.query_workflow_execution(execution_id=execution_id, name="status")
    assert status.query_name == "status"
    assert status.result == {"decision": None, "notes": [], "limit": 100}

    updated = executions.update_workflow_execution(
        execution_id=execution_id, name="set-limit", input={"limit": 7}
    )
    assert updated.update_name == "set-limit" and updated.result == {"old": 100, "new": 7}
    with pytest.raises(SDKError, match="400") as refused:
        executions.update_workflow_execution(
            execution_id=execution_id, name="set-limit", input={"limit": 0}
        )
    assert "BadLimit" in refused.value.body and "WF_1105" in refused.value.body

    reply = executions.signal_workflow_execution(
        execution_id=execution_id, name="note", input={"text": "looks fine"}
    )
    assert reply.message == "Signal accepted"
    wait_until(
        lambda: (
            executions.query_workflow_execution(execution_id=execution_id, name="status").result[
                "notes"
            ]
            == ["looks fine"]
        ),
        timeout=30,
        what="the note to be handled",
    )
    executions.signal_workflow_execution(
        execution_id=execution_id, name="decide", input={"decision": "reject"}
    )
    final = client.workflows.wait_for_workflow_completion(execution_id, polling_interval=0.1)
    assert final.status == "COMPLETED"
    assert final.result == {
        "outcome": "released reservation-book",
        "decision": "reject",
        "notes": ["looks fine"],
    }
    assert calls(tmp_path, "calls-release") == 1
    # Queries work on closed executions too.
    closed = executions.query_workflow_execution(execution_id=execution_id, name="status")
    assert closed.result == {"decision": "reject", "notes": ["looks fine"], "limit": 7}
    events = history(http, execution_id)
    kinds = types(events)
    assert kinds.count("WORKFLOW_EXECUTION_SIGNALED") == 2
    assert kinds.count("WORKFLOW_EXECUTION_UPDATE_ACCEPTED") == 2
    assert kinds.count("WORKFLOW_EXECUTION_UPDATE_COMPLETED") == 1
    assert kinds.count("WORKFLOW_EXECUTION_UPDATE_REJECTED") == 1
    assert kinds.count("TIMER_CANCELED") == 1


def test_a_saga_whose_decision_never_comes_compensates_when_its_timer_fires(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    execution_id = _saga(http, tmp_path, wait_seconds=1)
    final = wait_for_end(http, execution_id)
    assert final["status"] == "COMPLETED"
    assert final["result"]["decision"] == "timed out"
    fired = [e for e in history(http, execution_id) if e["event_type"] == "TIMER_FIRED"]
    assert len(fired) == 1 and fired[0]["attributes"]["late_seconds"] < 5


def test_cancel_reaches_a_waiting_workflow_which_cleans_up(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "sleeper", {"folder": str(tmp_path), "seconds": 3600})
    execution_id = started["execution_id"]
    _wait_for_event(http, execution_id, "TIMER_STARTED")
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    final = wait_for_end(http, execution_id)
    assert final["status"] == "CANCELED"
    assert calls(tmp_path, "calls-cleanup") == 1
    kinds = types(history(http, execution_id))
    assert kinds.count("WORKFLOW_EXECUTION_CANCEL_REQUESTED") == 1
    assert kinds[-1] == "WORKFLOW_EXECUTION_CANCELED"


def test_cancel_stops_a_running_activity_and_the_code_compensates(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "held-for-cancel", {"folder": str(tmp_path)})
    execution_id = started["execution_id"]
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the held activity")
    pid = int((tmp_path / "started").read_text())
    client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    final = wait_for_end(http, execution_id)
    assert final["status"] == "COMPLETED"
    assert final["result"] == {"cancelled": True, "cleaned": "cleanup"}
    wait_until(lambda: not alive(pid), timeout=30, what="the cancelled attempt to be stopped")
    events = history(http, execution_id)
    assert not [
        e
        for e in events
        if e["event_type"] == "ACTIVITY_TASK_COMPLETED" and e["attributes"]["seq"] == 1
    ]
    assert "ACTIVITY_TASK_CANCEL_REQUESTED" in types(events)


def test_terminate_while_an_activity_runs_records_nothing_it_returns(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "held", {"folder": str(tmp_path)})
    execution_id = started["execution_id"]
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the held activity")
    pid = int((tmp_path / "started").read_text())
    client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    record = client.workflows.executions.get_workflow_execution(execution_id=execution_id)
    assert record.status == "TERMINATED" and record.end_time is not None
    (tmp_path / "release").write_text("go")
    # Stopped: its process is killed before it can return (were it not, "finished").
    wait_until(lambda: not alive(pid), timeout=30, what="the terminated attempt to be stopped")
    assert not (tmp_path / "finished").exists()
    kinds = types(history(http, execution_id))
    assert kinds[-1] == "WORKFLOW_EXECUTION_TERMINATED"
    assert "ACTIVITY_TASK_COMPLETED" not in kinds


def test_twenty_concurrent_signals_are_each_delivered_once(
    client: Mistral, http: httpx.Client
) -> None:
    started = start(http, "signal-counter", {"expected": 20})
    execution_id = started["execution_id"]

    def send(number: int) -> None:
        client.workflows.executions.signal_workflow_execution(
            execution_id=execution_id, name="add", input={"number": number}
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(send, range(20)))
    final = wait_for_end(http, execution_id)
    assert final["status"] == "COMPLETED"
    assert sorted(final["result"]) == list(range(20))
    signaled = [
        e["attributes"]["input"]["value"]["number"]
        for e in history(http, execution_id)
        if e["event_type"] == "WORKFLOW_EXECUTION_SIGNALED"
    ]
    assert final["result"] == signaled  # delivered in the order recorded


def test_an_update_may_await_an_activity(client: Mistral, http: httpx.Client) -> None:
    started = start(http, "signal-counter", {"expected": 1})
    execution_id = started["execution_id"]
    reply = client.workflows.executions.update_workflow_execution(
        execution_id=execution_id, name="add-and-double", input={"number": 21}
    )
    assert reply.result == 42
    assert wait_for_end(http, execution_id)["result"] == [21]


def test_batch_cancel_and_terminate_answer_per_execution(
    client: Mistral, http: httpx.Client, tmp_path: Path
) -> None:
    first = start(http, "sleeper", {"folder": str(tmp_path), "seconds": 3600})["execution_id"]
    second = start(http, "sleeper", {"folder": str(tmp_path), "seconds": 3600})["execution_id"]
    executions = client.workflows.executions
    reply = executions.batch_terminate_workflow_executions(execution_ids=[first, "no-such-run"])
    assert reply.results is not None
    assert reply.results[first].status == "success"
    assert reply.results["no-such-run"].status == "failure"
    assert "not found" in (reply.results["no-such-run"].error or "")
    reply = executions.batch_cancel_workflow_executions(execution_ids=[first, second])
    assert reply.results is not None
    assert reply.results[second].status == "success"
    assert reply.results[first].status == "failure"
    assert "TERMINATED" in (reply.results[first].error or "")
    assert wait_for_end(http, second)["status"] == "CANCELED"
    assert wait_for_end(http, first)["status"] == "TERMINATED"


def test_refused_requests_change_nothing(
    client: Mistral, http: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    execution_id = _saga(http, tmp_path)
    closed = start(http, "sequential-sum", {"values": [1]}, wait_for_result=True)
    closed_id = closed["execution_id"]
    executions = client.workflows.executions
    before = stack.row_counts()

    # Unknown execution: 404, for every verb.
    for call in (
        lambda: executions.signal_workflow_execution(execution_id="nope", name="note"),
        lambda: executions.query_workflow_execution(execution_id="nope", name="status"),
        lambda: executions.update_workflow_execution(execution_id="nope", name="set-limit"),
        lambda: executions.cancel_workflow_execution(execution_id="nope"),
        lambda: executions.terminate_workflow_execution(execution_id="nope"),
    ):
        with pytest.raises(SDKError, match="404"):
            call()
    # A closed execution takes no cancel or terminate: 409 WF_1102, with its status.
    for verb in ("cancel", "terminate"):
        reply = http.post(f"/v1/workflows/executions/{closed_id}/{verb}")
        assert reply.status_code == 409, reply.text
        assert reply.json()["code"] == "WF_1102" and "COMPLETED" in reply.json()["detail"]
    # An unknown handler: 404 naming those that exist.
    with pytest.raises(SDKError, match="404") as unknown:
        executions.signal_workflow_execution(execution_id=execution_id, name="approve")
    assert "'decide', 'note'" in unknown.value.body
    # Input that does not fit the handler: FastAPI's 422.
    with pytest.raises(HTTPValidationError) as invalid:
        executions.signal_workflow_execution(
            execution_id=execution_id, name="decide", input={"decision": {"no": 1}}
        )
    assert invalid.value.data.detail is not None
    assert list(invalid.value.data.detail[0].loc) == ["body", "input", "decision"]
    with pytest.raises(HTTPValidationError):
        executions.update_workflow_execution(
            execution_id=execution_id, name="set-limit", input={"limit": "many"}
        )
    assert stack.row_counts() == before
    http.post(f"/v1/workflows/executions/{execution_id}/terminate")


def test_a_signal_to_a_closed_execution_is_refused_with_its_status(
    http: httpx.Client, tmp_path: Path
) -> None:
    execution_id = _saga(http, tmp_path)
    assert http.post(f"/v1/workflows/executions/{execution_id}/terminate").status_code == 204
    for verb, body in (
        ("signals", {"name": "note", "input": {"text": "late"}}),
        ("updates", {"name": "set-limit", "input": {"limit": 3}}),
    ):
        reply = http.post(f"/v1/workflows/executions/{execution_id}/{verb}", json=body)
        assert reply.status_code == 409, reply.text
        assert reply.json() == {
            "detail": f"Execution {execution_id!r} is TERMINATED: it takes no {verb}",
            "code": "WF_1102",
        }
    query = http.post(f"/v1/workflows/executions/{execution_id}/queries", json={"name": "status"})
    assert query.status_code == 200 and query.json()["result"]["decision"] is None


def test_an_attempt_that_stops_heartbeating_is_retried_without_waiting_for_its_deadline(
    http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "heartbeats", {"folder": str(tmp_path), "beats": 3})
    # The first attempt beats, then hangs (its start-to-close timeout is 60 s); its 2 s
    # heartbeat timeout fails it, and the second attempt returns.
    final = wait_for_end(http, started["execution_id"], timeout=30)
    assert final["status"] == "COMPLETED", final
    assert final["result"] == "call 2 beat 3 times"
    (retrying,) = [
        e["attributes"]
        for e in history(http, started["execution_id"])
        if e["event_type"] == "ACTIVITY_TASK_RETRYING"
    ]
    assert retrying["failure"]["type"] == "HeartbeatTimeout"
    assert retrying["last_heartbeat_details"]["value"] == [{"done": 3}]
    assert final["total_duration_ms"] < 30_000


@pytest.mark.parametrize("verb", ["cancel", "terminate"])
def test_cancel_and_terminate_reach_a_heartbeating_activity_which_cleans_up(
    client: Mistral, http: httpx.Client, tmp_path: Path, verb: str
) -> None:
    started = start(http, "heartbeat-cancel", {"folder": str(tmp_path)})
    execution_id = started["execution_id"]
    wait_until(lambda: (tmp_path / "started").exists(), timeout=30, what="the activity")
    if verb == "cancel":
        client.workflows.executions.cancel_workflow_execution(execution_id=execution_id)
    else:
        client.workflows.executions.terminate_workflow_execution(execution_id=execution_id)
    # Its next heartbeat raised, and its finally block ran (it was not killed).
    wait_until(lambda: (tmp_path / "cleaned").exists(), timeout=30, what="the clean-up")
    final = wait_for_end(http, execution_id)
    assert final["status"] == {"cancel": "CANCELED", "terminate": "TERMINATED"}[verb]
    assert "ACTIVITY_TASK_COMPLETED" not in types(history(http, execution_id))


def _pool_size(stack: Stack) -> int:
    """How many activities the stack's worker runs at once (its lane aside)."""
    celery = stack.celery_client()

    def sizes() -> list[int]:
        stats = celery.control.inspect(timeout=1).stats() or {}
        return [
            int(found["pool"]["max-concurrency"])
            for name, found in stats.items()
            if "workflow-lane" not in name
        ]

    try:
        (size,) = wait_until(sizes, timeout=20, what="the worker's stats")
    finally:
        celery.close()
    return size


def test_signals_and_cancel_are_handled_while_every_pool_process_runs_an_activity(
    client: Mistral, http: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    folders = [tmp_path / f"busy-{index}" for index in range(_pool_size(stack))]
    held = []
    for folder in folders:
        folder.mkdir()
        held.append(start(http, "held", {"folder": str(folder)})["execution_id"])
    try:
        wait_until(
            lambda: all((folder / "started").exists() for folder in folders),
            timeout=30,
            what="every pool process to run a held activity",
        )
        # The workflow lane runs workflow tasks meanwhile: this one's first, its signal's,
        # and its cancel's.
        waiting = start(http, "signal-counter", {"expected": 5})["execution_id"]
        client.workflows.executions.signal_workflow_execution(
            execution_id=waiting, name="add", input={"number": 7}
        )
        wait_until(
            lambda: (
                client.workflows.executions.query_workflow_execution(
                    execution_id=waiting, name="received"
                ).result
                == [7]
            ),
            timeout=20,
            what="the signal to be handled",
        )
        client.workflows.executions.cancel_workflow_execution(execution_id=waiting)
        assert wait_for_end(http, waiting, timeout=20)["status"] == "CANCELED"
        # ... all before any held activity ended.
        assert not any((folder / "finished").exists() for folder in folders)
    finally:
        for folder in folders:
            (folder / "release").write_text("go")
    for execution_id in held:
        assert wait_for_end(http, execution_id, timeout=60)["status"] == "COMPLETED"
