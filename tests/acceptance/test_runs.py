"""The runs API through the real `mistralai` SDK: every run listed with its filters and
paged without gaps or repeats while executions keep starting, one run, its history."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral

from tests.acceptance.conftest import Stack, wait_for_end

pytestmark = pytest.mark.timeout(120)


def _start(http: httpx.Client, workflow: str, execution_id: str, input_value: Any) -> None:
    reply = http.post(
        f"/v1/workflows/{workflow}/execute",
        json={"execution_id": execution_id, "input": input_value},
    )
    assert reply.status_code == 200, reply.text


def _all_pages(client: Mistral, **filters: Any) -> list[Any]:
    """Every item of a listing, page after page as the SDK's .next() walks them."""
    items = []
    page = client.workflows.runs.list_runs(**filters)
    while page is not None:
        items.extend(page.result.executions)
        page = page.next()
    return items


def test_paging_through_runs_with_filters_skips_and_repeats_nothing_while_runs_start(
    stack: Stack, http: httpx.Client
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    prefix = f"runs-{uuid.uuid4().hex[:8]}-"
    before = [f"{prefix}{n:03}" for n in range(23)]
    for execution_id in before:
        _start(http, "sequential-sum", execution_id, [1, 2])
    for execution_id in before:
        wait_for_end(http, execution_id)

    # While the listing is paged, more executions start under the same prefix.
    stop = threading.Event()
    started_during: list[str] = []

    def keep_starting() -> None:
        with httpx.Client(base_url=stack.base_url, timeout=30) as other:
            while not stop.is_set() and len(started_during) < 40:
                execution_id = f"{prefix}late-{len(started_during):03}"
                _start(other, "sequential-sum", execution_id, [3])
                started_during.append(execution_id)

    starter = threading.Thread(target=keep_starting)
    starter.start()
    try:
        for order in ("desc", "asc"):
            listed = _all_pages(
                client,
                search=prefix,
                workflow_identifier="sequential-sum",
                page_size=4,
                order=order,
            )
            ids = [run.execution_id for run in listed]
            assert len(ids) == len(set(ids)), "a run was listed twice"
            assert set(before) <= set(ids), "a run that existed before paging was skipped"
            assert set(ids) <= set(before) | set(started_during) | _late_ids(prefix)
            starts = [run.start_time for run in listed]
            assert starts == sorted(starts, reverse=order == "desc")
    finally:
        stop.set()
        starter.join(timeout=60)

    # Status, given once or repeated, and times: each narrows the same listing.
    completed = _all_pages(client, search=prefix + "0", status="COMPLETED", page_size=10)
    assert sorted(r.execution_id for r in completed) == before
    assert all(r.status == "COMPLETED" and r.end_time is not None for r in completed)
    assert _all_pages(client, search=prefix + "0", status=["FAILED", "CANCELED"]) == []
    future = datetime.now(UTC) + timedelta(hours=1)
    assert _all_pages(client, search=prefix, start_time_after=future) == []
    first = min(completed, key=lambda r: r.start_time)
    since_first = _all_pages(client, search=prefix + "0", start_time_after=first.start_time)
    assert len(since_first) == len(before)
    earliest_end = min(completed, key=lambda r: r.end_time)
    ended_early = _all_pages(client, search=prefix + "0", end_time_before=earliest_end.end_time)
    assert [r.execution_id for r in ended_early] == [earliest_end.execution_id]
    # By end time, oldest first, in pages of 5.
    by_end = _all_pages(client, search=prefix + "0", sort_by="end_time", order="asc", page_size=5)
    ends = [r.end_time for r in by_end]
    assert len(by_end) == len(before) and ends == sorted(ends)
    # Filters that match nothing Chainline records.
    assert _all_pages(client, search=prefix, deployment_name="elsewhere") == []
    assert _all_pages(client, search=prefix, workflow_tags=["billing"]) == []
    assert _all_pages(client, search=prefix, user_id="someone-else") == []


def _late_ids(prefix: str) -> set[str]:
    return {f"{prefix}late-{n:03}" for n in range(40)}


def test_a_run_and_its_history_are_read_by_run_id(stack: Stack, http: httpx.Client) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    execution_id = f"run-read-{uuid.uuid4().hex}"
    _start(http, "sequential-sum", execution_id, [4, 5])
    record = wait_for_end(http, execution_id)

    run = client.workflows.runs.get_run(run_id=record["run_id"])
    assert run.execution_id == execution_id
    assert run.status == "COMPLETED" and run.result == {"total": 9}
    history = client.workflows.runs.get_run_history(run_id=record["run_id"])
    types = [event["event_type"] for event in history["events"]]
    assert types[0] == "WORKFLOW_EXECUTION_STARTED"
    assert types[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    assert {event["workflow_run_id"] for event in history["events"]} == {record["run_id"]}

    # The root's tree: one execution, its one run.
    tree = _all_pages(client, root_execution_id=execution_id)
    assert [(r.execution_id, r.run_id) for r in tree] == [(execution_id, record["run_id"])]


def test_bad_run_ids_and_page_tokens_are_refused(http: httpx.Client) -> None:
    missing = http.get(f"/v1/workflows/runs/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "WF_1100"
    assert http.get("/v1/workflows/runs/not-a-uuid").status_code == 422
    assert http.get(f"/v1/workflows/runs/{uuid.uuid4()}/history").status_code == 404
    for token in ("garbage", "eyJ4IjoxfQ", "W10"):
        reply = http.get("/v1/workflows/runs", params={"next_page_token": token})
        assert reply.status_code == 422, token
        assert reply.json()["detail"][0]["loc"] == ["query", "next_page_token"]
    # A token handed out for one order is refused for another.
    first = http.get("/v1/workflows/runs", params={"page_size": 1, "order": "desc"}).json()
    if first["next_page_token"] is not None:
        reply = http.get(
            "/v1/workflows/runs",
            params={"page_size": 1, "order": "asc", "next_page_token": first["next_page_token"]},
        )
        assert reply.status_code == 422
    assert http.get("/v1/workflows/runs", params={"status": "NOPE"}).status_code == 422
    for name in ("search", "workflow_identifier", "search_key", "root_execution_id"):
        reply = http.get("/v1/workflows/runs", params={name: "a\x00b"})
        assert reply.status_code == 422, name
        assert reply.json()["detail"][0]["loc"] == ["query", name]
    assert http.get("/v1/workflows/runs", params={"page_size": 0}).status_code == 422


def test_runs_are_found_by_search_keys_with_the_sdk_s_matching_rules(
    stack: Stack, http: httpx.Client
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    prefix = f"keys-{uuid.uuid4().hex[:8]}-"
    orders = {
        "gold-eu": {"customer": {"tier": "Gold"}, "region": "eu-west", "coupon": None},
        "gold-us": {"customer": {"tier": "gold"}, "region": "us-east", "coupon": "WELCOME"},
        "silver-eu": {"customer": {"tier": "Silver"}, "region": "eu-central"},
    }
    for name, order in orders.items():
        _start(http, "keyed-order", prefix + name, order)
    for name in orders:
        wait_for_end(http, prefix + name)

    def found(*search_key: str) -> list[str]:
        runs = _all_pages(client, search=prefix, search_key=list(search_key))
        return sorted(r.execution_id.removeprefix(prefix) for r in runs)

    assert found("customer.tier:GOL") == ["gold-eu", "gold-us"]
    assert found("customer.tier==:Gold") == ["gold-eu"]
    assert found("coupon") == ["gold-eu", "gold-us"]
    assert found("coupon==") == ["gold-eu"]
    assert found("region:eu", "customer.tier:silver") == ["silver-eu"]
    assert found("region==:eu") == []
    assert found("customer.missing") == []
    # A % or _ in the value is matched as itself.
    assert found("region:eu%") == [] and found("region:_") == []

    record = client.workflows.executions.get_workflow_execution(
        execution_id=prefix + "gold-us", include_search_keys=True
    )
    assert record.search_keys == {
        "customer.tier": "gold",
        "region": "us-east",
        "coupon": "WELCOME",
    }
    plain = http.get(f"/v1/workflows/executions/{prefix}gold-us").json()
    assert "search_keys" not in plain
    for bad in ([":x"], ["a", "b", "c", "d"]):
        reply = http.get("/v1/workflows/runs", params={"search_key": bad})
        assert reply.status_code == 422, bad


def test_workflow_code_and_its_activities_change_its_search_keys(
    stack: Stack, http: httpx.Client
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    execution_id = f"self-tagging-{uuid.uuid4().hex}"
    _start(http, "self-tagging", execution_id, {"tier": "platinum"})
    assert wait_for_end(http, execution_id)["status"] == "COMPLETED"
    record = client.workflows.executions.get_workflow_execution(
        execution_id=execution_id, include_search_keys=True
    )
    assert record.search_keys == {"stage": "done", "customer.tier": "platinum", "coupon": None}
    found = _all_pages(
        client, search=execution_id, search_key=["customer.tier==:platinum", "coupon=="]
    )
    assert [r.execution_id for r in found] == [execution_id]
    assert _all_pages(client, search=execution_id, search_key=["scratch"]) == []
