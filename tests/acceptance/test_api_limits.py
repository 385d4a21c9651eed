"""Limits a stack with API keys enforces: keys checked before bodies are read, bodies
capped as they arrive, waiting capped so that it never takes the API down, and the
API's answers checked against its own OpenAPI document (schemathesis)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)
from sqlalchemy import create_engine, func, select

from app.settings import normalize_database_url
from app.storage.schema import executions
from tests.acceptance.conftest import Stack, execution_id, own_stack
from tests.support import wait_until

KEY = "limits-test-key"
WAITING_CAP = 3
SETTINGS = {
    "CHAINLINE_API_KEYS": f"{KEY},another-key",
    "CHAINLINE_MAX_WAITING_REQUESTS": str(WAITING_CAP),
    # Only workflows that touch nothing but their inputs: schemathesis makes them up.
    "CHAINLINE_WORKFLOWS": "workers.workflows.examples",
}
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    hello = ("hello-world", {"name": "x"}, {"message": "Hello, x!"})
    with own_stack(tmp_path_factory.mktemp("limits"), SETTINGS, AUTH, probe=hello) as stack:
        yield stack


@pytest.fixture
def api(limited: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.base_url, headers=AUTH, timeout=30) as client:
        yield client


def _read_answer(connection: socket.socket) -> str:
    """One whole HTTP answer off a raw connection (headers, then the declared body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length.group(1)):
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_request_without_a_key_is_refused_before_its_body_is_read(limited: Stack) -> None:
    host, port = limited.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        # Headers promising a large body, and none of it sent: the answer cannot wait.
        connection.sendall(
            b"POST /v1/workflows/hello-world/execute HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        answer = _read_answer(connection)
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "CHAINLINE_API_KEY" in answer
    with httpx.Client(base_url=limited.base_url) as anonymous:
        assert anonymous.get("/v1/workflows").status_code == 401
        assert (
            anonymous.get("/v1/workflows", headers={"authorization": "Bearer nope"}).json()["code"]
            == "WF_1401"
        )
        # The API's shape is no secret: its documents stay readable (README).
        assert anonymous.get("/openapi.json").status_code == 200
        assert anonymous.get("/healthz").status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(api: httpx.Client) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"input": {"name": "'
        for _ in range(10 * 1024):  # 10 MB, and no Content-Length
            sent += 1024
            yield b"x" * 1024
        yield b'"}}'

    reply = api.post("/v1/workflows/hello-world/execute", content=chunks())
    assert reply.status_code == 413
    assert "CHAINLINE_MAX_PAYLOAD_BYTES" in reply.json()["detail"]


def _wait_for_result(client: httpx.Client, seconds: float) -> httpx.Response:
    return client.post(
        "/v1/workflows/hello-world/execute",
        json={
            "execution_id": execution_id(),
            "input": {"name": "waiter"},
            "wait_for_result": True,
            "timeout_seconds": seconds,
        },
    )


def _hello_executions(stack: Stack) -> int:
    engine = create_engine(normalize_database_url(stack.env["CHAINLINE_DATABASE_URL"]))
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(executions.c.workflow_name == "hello-world")
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def _open_waiter(stack: Stack, seconds: float) -> socket.socket:
    """A wait_for_result request on a raw connection, its answer left unread."""
    host, port = stack.base_url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "execution_id": execution_id(),
            "input": {"name": "waiter"},
            "wait_for_result": True,
            "timeout_seconds": seconds,
        }
    ).encode()
    connection = socket.create_connection((host, int(port)), timeout=60)
    connection.sendall(
        b"POST /v1/workflows/hello-world/execute HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return connection


@pytest.fixture
def no_worker(limited: Stack) -> Iterator[None]:
    """Nothing finishes meanwhile: every waiter waits its time out."""
    limited.stop_process("worker")
    try:
        yield
    finally:
        limited.start("worker")
        limited.wait_for_worker()


@pytest.mark.usefixtures("no_worker")
def test_waiting_is_capped_and_never_holds_up_other_requests(
    limited: Stack, api: httpx.Client
) -> None:
    before = _hello_executions(limited)
    waiters = [_open_waiter(limited, 4) for _ in range(WAITING_CAP)]
    try:
        wait_until(lambda: _hello_executions(limited) >= before + WAITING_CAP, what="the waiters")
        # Beyond the cap: refused at once, before anything started.
        refused = _wait_for_result(api, 4)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] and refused.json()["code"] == "WF_1201"
        assert _hello_executions(limited) == before + WAITING_CAP
        # Health and reads answer meanwhile, at once.
        started = time.monotonic()
        assert api.get("/healthz").status_code == 200
        assert api.get("/v1/workflows").status_code == 200
        assert time.monotonic() - started < 2
        for waiter in waiters:
            answer = _read_answer(waiter)
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "WF_1104" in answer and "RUNNING" in answer
    finally:
        for waiter in waiters:
            waiter.close()


@pytest.mark.usefixtures("no_worker")
def test_a_waiter_whose_client_went_away_gives_its_place_up(
    limited: Stack, api: httpx.Client
) -> None:
    before = _hello_executions(limited)
    waiters = [_open_waiter(limited, 60) for _ in range(WAITING_CAP)]
    try:
        wait_until(lambda: _hello_executions(limited) >= before + WAITING_CAP, what="the waiters")
        assert _wait_for_result(api, 1).status_code == 503
        waiters.pop().close()  # one client goes away
        timed_out = wait_until(
            lambda: (r := _wait_for_result(api, 1)).status_code == 408 and r,
            timeout=15,
            what="the gone client's place to free up",
        )
        assert timed_out.json()["code"] == "WF_1104"
    finally:
        for waiter in waiters:
            waiter.close()


def test_a_completed_wait_answers_the_result_and_a_failed_one_the_record(
    api: httpx.Client,
) -> None:
    done = _wait_for_result(api, 30)
    assert done.status_code == 200 and done.json()["result"] == {"message": "Hello, waiter!"}
    failed = api.post(
        "/v1/workflows/retry-demo/execute",
        json={"input": {"failures": 10}, "wait_for_result": True, "timeout_seconds": 30},
    )
    assert failed.status_code == 200
    assert failed.json()["status"] == "FAILED" and failed.json()["result"] is None


# Examples per operation: a few hundred cases in all, in well under two minutes.
EXAMPLES_PER_OPERATION = 50


def test_every_answer_matches_the_openapi_document_and_none_is_a_5xx(limited: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{limited.base_url}/openapi.json", headers=AUTH)
    # The routes Chainline answers 501 (unimplemented.py, tested there) are left out:
    # a 5xx is what they are for.
    # So are the event streams, which answer for as long as the client listens (their
    # frames are checked through the SDK in test_streams.py).
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if not {"not implemented yet", "streams"} & set(operation.definition.raw.get("tags") or [])
    ]
    assert len(operations) >= 5
    checked = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: Any) -> None:
            # What is checked: no 5xx, status codes and
            # answers as documented, and content types. (Which requests must be refused
            # is the other tests' business: the key goes in every request here.)
            case.call_and_validate(
                base_url=limited.base_url,
                headers=AUTH,
                timeout=30,
                excluded_checks=[negative_data_rejection, positive_data_acceptance, ignored_auth],
            )

        check()
        checked += 1
    assert checked == len(operations)


@pytest.mark.usefixtures("no_worker")
def test_an_update_s_caller_waits_under_the_same_cap(limited: Stack, api: httpx.Client) -> None:
    started = api.post("/v1/workflows/approval/execute", json={"input": {"item": "x"}})
    approval = started.json()["execution_id"]
    history = f"/v1/workflows/executions/{approval}/history"
    events_before = len(api.get(history).json()["events"])
    before = _hello_executions(limited)
    waiters = [_open_waiter(limited, 4) for _ in range(WAITING_CAP)]
    try:
        wait_until(lambda: _hello_executions(limited) >= before + WAITING_CAP, what="the waiters")
        refused = api.post(
            f"/v1/workflows/executions/{approval}/updates",
            json={"name": "comment", "input": {"text": "too many"}},
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and refused.json()["code"] == "WF_1201"
        # Refused before anything was recorded.
        assert len(api.get(history).json()["events"]) == events_before
        for waiter in waiters:
            assert _read_answer(waiter).startswith("HTTP/1.1 408")
    finally:
        for waiter in waiters:
            waiter.close()
    api.post(f"/v1/workflows/executions/{approval}/terminate")
