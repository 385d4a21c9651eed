"""Continue-as-new through the real `mistralai` SDK on the Procfile's processes: an
execution hands over to a new one in the same tree, linked both ways."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from tests.acceptance.conftest import Stack, history, start, wait_for_end
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


def _successor(http: httpx.Client, execution_id: str) -> str | None:
    record = http.get(f"/v1/workflows/executions/{execution_id}").json()
    if record["end_time"] is None:
        return None
    found: str | None = record["continued_as_execution_id"]
    return found or "-"


def test_a_counter_continues_as_new_twice_and_its_tree_is_listed_by_its_root(
    stack: Stack, http: httpx.Client
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    first = start(http, "counter", {"count": 0, "target": 3})["execution_id"]
    chain = [first]
    while len(chain) < 3:
        successor = wait_until(lambda: _successor(http, chain[-1]), what="the successor")
        assert successor != "-", f"{chain[-1]} ended without continuing"
        chain.append(successor)
    last = wait_for_end(http, chain[-1])
    assert last["status"] == "COMPLETED" and last["result"] == {"count": 3}

    records: list[dict[str, Any]] = [
        http.get(f"/v1/workflows/executions/{e}").json() for e in chain
    ]
    assert [r["status"] for r in records] == ["CONTINUED_AS_NEW", "CONTINUED_AS_NEW", "COMPLETED"]
    assert [r["continued_from_execution_id"] for r in records] == [None, *chain[:2]]
    assert [r["continued_as_execution_id"] for r in records] == [*chain[1:], None]
    # The SDK reads each; the predecessors say how they ended.
    sdk_record = client.workflows.executions.get_workflow_execution(execution_id=chain[1])
    assert sdk_record.status == "CONTINUED_AS_NEW" and sdk_record.root_execution_id == first

    # One tree: every run under the root, newest first.
    tree = client.workflows.runs.list_runs(root_execution_id=first).result.executions
    assert [r.execution_id for r in tree] == list(reversed(chain))

    # Events: each run names the one it continued from, and the chain's first run.
    first_run = records[0]["run_id"]
    for previous, record in zip([None, *records], records, strict=False):
        events = history(http, record["execution_id"])
        expected = None if previous is None else previous["run_id"]
        assert {e["continued_run_id"] for e in events} == {expected}
        assert {e["first_execution_run_id"] for e in events} == {first_run}
    closing = history(http, first)[-1]
    assert closing["event_type"] == "WORKFLOW_EXECUTION_CONTINUED_AS_NEW"
    assert closing["attributes"]["new_execution_run_id"] == records[1]["run_id"]
    assert closing["attributes"]["input"]["value"] == {"count": 1, "target": 3}

    # A signal to a predecessor is refused, naming where the execution went.
    reply = http.post(f"/v1/workflows/executions/{first}/signals", json={"name": "add"})
    assert reply.status_code == 409
    assert reply.json()["code"] == "WF_1102" and chain[1] in reply.json()["detail"]
    with pytest.raises(SDKError) as raised:
        client.workflows.executions.signal_workflow_execution(
            execution_id=first, name="anything", input={}
        )
    assert raised.value.status_code == 409 and chain[1] in raised.value.body
