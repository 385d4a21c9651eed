"""Child workflows through the real `mistralai` SDK on the Procfile's processes: each
child an execution of its own in the parent's tree, its outcome back in the parent's
history, and the parent's closing applied to children still running."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mistralai.client import Mistral

from tests.acceptance.conftest import Stack, history, start, wait_for_end
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def test_a_parent_gathers_three_children(stack: Stack, http: httpx.Client) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    parent_id = start(http, "child-gatherer", {"values": [3, 4, 5]})["execution_id"]
    parent = wait_for_end(http, parent_id)
    assert parent["status"] == "COMPLETED"
    assert parent["result"] == {"squares": [9, 16, 25]}

    events = history(http, parent_id)
    child_ids = [
        e["attributes"]["execution_id"]
        for e in events
        if e["event_type"] == "CHILD_WORKFLOW_STARTED"
    ]
    assert len(child_ids) == 3
    outcomes = [e for e in events if e["event_type"] == "CHILD_WORKFLOW_COMPLETED"]
    assert sorted(e["attributes"]["result"]["value"] for e in outcomes) == [9, 16, 25]
    for child_id in child_ids:
        child = client.workflows.executions.get_workflow_execution(execution_id=child_id)
        assert child.status == "COMPLETED"
        assert child.parent_execution_id == parent_id
        assert child.root_execution_id == parent_id
        child_events = history(http, child_id)
        assert {e["parent_workflow_exec_id"] for e in child_events} == {parent_id}
        assert {e["root_workflow_exec_id"] for e in child_events} == {parent_id}

    tree = client.workflows.runs.list_runs(root_execution_id=parent_id).result.executions
    assert sorted(r.execution_id for r in tree) == sorted([parent_id, *child_ids])


def test_a_child_s_failure_is_an_error_its_parent_catches(stack: Stack, http: httpx.Client) -> None:
    parent_id = start(http, "child-failure-catcher", {})["execution_id"]
    parent = wait_for_end(http, parent_id)
    assert parent["status"] == "COMPLETED"
    assert parent["result"] == {"failed": ["FAILED", "ChildRefused", "nope"]}


@pytest.mark.parametrize(
    ("policy", "child_ends"),
    [("TERMINATE", "TERMINATED"), ("REQUEST_CANCEL", "CANCELED"), ("ABANDON", "COMPLETED")],
)
def test_the_parent_s_closing_applies_its_close_policy_to_a_running_child(
    stack: Stack, http: httpx.Client, tmp_path: Path, policy: str, child_ends: str
) -> None:
    parent_id = start(http, "child-starter", {"folder": str(tmp_path), "policy": policy})[
        "execution_id"
    ]
    parent = wait_for_end(http, parent_id)
    assert parent["status"] == "COMPLETED"
    child_id = parent["result"]
    wait_until(lambda: (tmp_path / "started").exists(), what="the child's activity")
    if policy == "ABANDON":
        # Left running: it finishes once released, on its own.
        reply = http.get(f"/v1/workflows/executions/{child_id}").json()
        assert reply["end_time"] is None
        (tmp_path / "release").write_text("go")
    child = wait_for_end(http, child_id, timeout=30)
    assert child["status"] == child_ends
    assert child["parent_execution_id"] == parent_id
    (tmp_path / "release").write_text("go")
