"""The public `mistralai` SDK, unmodified, against a live Chainline server."""

from __future__ import annotations

import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.acceptance.conftest import Stack, execution_id


@pytest.fixture
def client(stack: Stack) -> Mistral:
    return Mistral(api_key="test-key", server_url=stack.base_url)


def test_execute_workflow_and_wait_by_polling(client: Mistral) -> None:
    result = client.workflows.execute_workflow_and_wait(
        workflow_identifier="sequential-sum",
        input={"values": [3, 4]},
        polling_interval=0.1,
        max_attempts=300,
    )
    assert result == {"total": 7}


def test_execute_workflow_and_wait_with_the_api_waiting(client: Mistral) -> None:
    result = client.workflows.execute_workflow_and_wait(
        workflow_identifier="order-approval",
        input={"order_id": "sdk", "amount": 500},
        use_api_sync=True,
        timeout_seconds=30,
    )
    assert result["receipt"]["approved_by"] == "manager"


def test_get_execution_and_its_history(client: Mistral) -> None:
    chosen = execution_id()
    started = client.workflows.execute_workflow(
        workflow_identifier="sequential-sum", execution_id=chosen, input={"values": [1]}
    )
    assert started.execution_id == chosen
    final = client.workflows.wait_for_workflow_completion(chosen, polling_interval=0.1)
    assert final.status == "COMPLETED"
    assert final.result == {"total": 1}
    record = client.workflows.executions.get_workflow_execution(execution_id=chosen)
    assert record.root_execution_id == chosen
    assert record.run_id is not None and record.end_time is not None
    events = client.workflows.executions.get_workflow_execution_history(execution_id=chosen)
    assert isinstance(events, dict)
    kinds = [e["event_type"] for e in events["events"]]
    assert kinds[0] == "WORKFLOW_EXECUTION_STARTED"
    assert kinds[-1] == "WORKFLOW_EXECUTION_COMPLETED"


def test_workflows_are_listed_and_fetched(client: Mistral) -> None:
    listing = client.workflows.get_workflows()
    assert "sequential-sum" in [w.name for w in listing.result.workflows]
    one = client.workflows.get_workflow(workflow_identifier="sequential-sum")
    assert one.workflow.name == "sequential-sum" and one.workflow.active is True


def test_errors_reach_the_sdk_as_sdk_errors(client: Mistral) -> None:
    with pytest.raises(SDKError, match="404"):
        client.workflows.executions.get_workflow_execution(execution_id="missing")
    with pytest.raises(RuntimeError, match="FAILED"):
        client.workflows.execute_workflow_and_wait(
            workflow_identifier="raises", input={"reason": "x"}, polling_interval=0.1
        )
