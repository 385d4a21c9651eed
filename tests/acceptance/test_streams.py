"""Streams and the events API through the real `mistralai` SDK on the Procfile's
processes: an execution streamed from start to end, resumed from an id, the global
stream narrowed to a tree, pages of events, and a signal's effect seen live."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral

from tests.acceptance.conftest import Stack, start, wait_for_end
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def _client(stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.base_url)


def _frames(client: Mistral, execution_id: str, **options: Any) -> list[Any]:
    """Every frame of the execution's stream, until the server ends it."""
    with client.workflows.executions.stream(execution_id=execution_id, **options) as stream:
        return list(stream)


def _types(frames: list[Any]) -> list[str]:
    return [frame.data.data.event_type for frame in frames]


def test_an_execution_streams_from_start_to_completed_in_order_and_resumes_from_an_id(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    execution_id = start(http, "sequential-sum", [1, 2, 3])["execution_id"]
    frames = _frames(client, execution_id)

    assert _types(frames) == [
        "WORKFLOW_EXECUTION_STARTED",
        *["ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_COMPLETED"] * 3,
        "WORKFLOW_EXECUTION_COMPLETED",
    ]
    positions = [frame.data.broker_sequence for frame in frames]
    assert positions == sorted(set(positions))
    assert [frame.id for frame in frames] == [str(p) for p in positions]
    assert all(frame.event == "workflow.event" for frame in frames)
    completed = frames[-1].data.data
    assert completed.attributes.result.value == {"total": 6}
    assert {f.data.workflow_context.workflow_exec_id for f in frames} == {execution_id}
    # Internal bookkeeping (workflow tasks, scheduling) stays out of the stream.
    assert "WORKFLOW_TASK_COMPLETED" not in _types(frames)

    # Resumed after the third frame: exactly the rest.
    rest = _frames(client, execution_id, last_event_id=frames[2].id)
    assert [f.id for f in rest] == [f.id for f in frames[3:]]
    # Stored only: the same, and it ends.
    stored = _frames(client, execution_id, event_source="DATABASE")
    assert [f.id for f in stored] == [f.id for f in frames]


def test_the_global_stream_narrowed_to_a_tree_holds_the_tree_alone(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    start(http, "sequential-sum", [9])  # another execution, running meanwhile
    parent_id = start(http, "child-gatherer", {"values": [1, 2]})["execution_id"]
    seen: list[Any] = []
    with client.workflows.events.get_stream_events(root_workflow_exec_id=parent_id) as stream:
        for frame in stream:
            seen.append(frame.data)
            event = frame.data.data
            if (
                event.workflow_exec_id == parent_id
                and event.event_type == "WORKFLOW_EXECUTION_COMPLETED"
            ):
                break
    assert {payload.data.root_workflow_exec_id for payload in seen} == {parent_id}
    executions = {payload.data.workflow_exec_id for payload in seen}
    assert parent_id in executions and len(executions) == 3  # the parent, two children
    positions = [payload.broker_sequence for payload in seen]
    assert positions == sorted(set(positions))

    # From a position on (start_seq is inclusive), narrowed to activity events.
    middle = positions[len(positions) // 2]
    with client.workflows.events.get_stream_events(
        root_workflow_exec_id=parent_id, start_seq=middle, scope="activity"
    ) as stream:
        first = next(iter(stream)).data
    assert first.broker_sequence >= middle
    assert first.data.event_type.startswith("ACTIVITY_TASK_")


def test_the_events_list_pages_an_execution_s_events_in_stream_order(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    execution_id = start(http, "sequential-sum", [1, 2, 3])["execution_id"]
    wait_for_end(http, execution_id)
    streamed = _frames(client, execution_id)
    listed = []
    cursor = None
    while True:
        page = client.workflows.events.get_workflow_events(
            workflow_exec_id=execution_id, limit=3, cursor=cursor
        )
        listed.extend(page.events)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [e.event_type for e in listed] == _types(streamed)
    assert [e.workflow_run_id for e in listed] == [f.data.data.workflow_run_id for f in streamed]
    assert http.get("/v1/workflows/events/list", params={"cursor": "x"}).status_code == 422


def test_a_signal_s_effect_shows_on_a_live_stream_within_a_second(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    client = _client(stack)
    execution_id = start(http, "approval-saga", {"folder": str(tmp_path), "item": "book"})[
        "execution_id"
    ]
    seen: list[tuple[float, str]] = []
    ready = threading.Event()

    def follow() -> None:
        with client.workflows.executions.stream(execution_id=execution_id) as stream:
            ready.set()
            for frame in stream:
                event = frame.data.data
                seen.append((time.monotonic(), event.event_type))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    ready.wait(10)
    # Reserved, and waiting for its decision.
    wait_until(lambda: "ACTIVITY_TASK_COMPLETED" in [t for _, t in seen], what="reserve")
    before = len(seen)
    sent_at = time.monotonic()
    reply = http.post(
        f"/v1/workflows/executions/{execution_id}/signals",
        json={"name": "decide", "input": {"decision": "reject"}},
    )
    assert reply.status_code == 202
    # Rejected: the compensation (an activity) starts, and shows on the stream.
    arrived = wait_until(
        lambda: next((at for at, t in seen[before:] if t == "ACTIVITY_TASK_STARTED"), None),
        timeout=10,
        what="the compensation on the stream",
    )
    assert arrived - sent_at < 1.0
    follower.join(timeout=30)
    assert seen[-1][1] == "WORKFLOW_EXECUTION_COMPLETED"


def test_custom_tasks_report_progress_from_workflow_code_and_activities(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    execution_id = start(http, "reporting-progress", {"rows": 3})["execution_id"]
    frames = _frames(client, execution_id)
    custom = [
        (f.data.data.event_type, f.data.data.attributes.custom_task_type)
        for f in frames
        if f.data.data.event_type.startswith("CUSTOM_TASK_")
    ]
    assert custom == [
        ("CUSTOM_TASK_STARTED", "plan"),
        ("CUSTOM_TASK_IN_PROGRESS", "plan"),
        ("CUSTOM_TASK_STARTED", "export"),
        *[("CUSTOM_TASK_IN_PROGRESS", "export")] * 3,
        ("CUSTOM_TASK_COMPLETED", "export"),
        ("CUSTOM_TASK_IN_PROGRESS", "plan"),
        ("CUSTOM_TASK_COMPLETED", "plan"),
        ("CUSTOM_TASK_STARTED", "doomed"),
        ("CUSTOM_TASK_FAILED", "doomed"),
    ]
    attributes = [
        f.data.data.attributes for f in frames if f.data.data.event_type.startswith("CUSTOM_")
    ]
    assert len({a.custom_task_id for a in attributes}) == 3
    patches = [a.payload.value for a in attributes[3:6]]
    assert [p[0].value for p in patches] == [1, 2, 3]
    assert {p[0].path for p in patches} == {"/done"}
    assert attributes[7].payload.value == {"step": "done", "rows": 3}
    assert attributes[10].failure.message == "not this time"
    assert frames[-1].data.data.event_type == "WORKFLOW_EXECUTION_COMPLETED"


def test_a_reset_run_streams_what_it_adds_not_the_history_it_copied(
    stack: Stack, http: httpx.Client
) -> None:
    client = _client(stack)
    started = start(http, "sequential-sum", [1, 2])
    execution_id = started["execution_id"]
    wait_for_end(http, execution_id)
    # Followed to its end: every event of the first run is on the stream by then.
    before = _frames(client, execution_id)
    events = http.get(f"/v1/workflows/executions/{execution_id}/history").json()["events"]
    point = [int(e["event_id"]) for e in events if e["event_type"] == "WORKFLOW_TASK_COMPLETED"][1]
    reply = http.post(f"/v1/workflows/executions/{execution_id}/reset", json={"event_id": point})
    assert reply.status_code == 204
    new_run = wait_for_end(http, execution_id)["run_id"]
    assert new_run != started["run_id"]

    after = _frames(client, execution_id)
    assert [f.id for f in after[: len(before)]] == [f.id for f in before]
    added = after[len(before) :]
    assert {f.data.data.workflow_run_id for f in added} == {new_run}
    # The old run's terminal event came first; the new run shows only what it did.
    assert _types(added) == [
        "ACTIVITY_TASK_STARTED",
        "ACTIVITY_TASK_COMPLETED",
        "WORKFLOW_EXECUTION_COMPLETED",
    ]
