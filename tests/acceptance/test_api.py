"""The API's surface as a newcomer meets it: no 500s, honest errors, routes that say
what they do not do, documentation that works offline, keys that stay secret."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from app.api.access import key_id
from tests.acceptance.conftest import Stack, execution_id, wait_for_end

# Raw bodies, as a client could send them: JSON escapes Python's parser lets through.
BAD_BODIES = [
    (b'{"input": {"values": ["\\ud800"]}}', ["body", "input"]),
    (b'{"input": {"values": ["a\\u0000b"]}}', ["body", "input"]),
    (b'{"input": {"values": [NaN]}}', ["body", "input"]),
    (b'{"input": {"values": [1]}, "timeout_seconds": NaN}', ["body", "timeout_seconds"]),
    (b'{"input": {"values": [1]}, "timeout_seconds": Infinity}', ["body", "timeout_seconds"]),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_input_is_a_422_naming_the_field_and_changes_nothing(
    stack: Stack, http: httpx.Client, body: bytes, field: list[str]
) -> None:
    before = stack.row_counts()
    reply = http.post(
        "/v1/workflows/sequential-sum/execute",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["loc"][: len(field)] == field
    assert stack.row_counts() == before
    # The same keep-alive connection goes on serving.
    assert http.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "path", ["/v1/workflows/executions/a%00b", "/v1/workflows/executions/a%00b/history"]
)
def test_an_id_no_execution_can_have_is_a_422(http: httpx.Client, path: str) -> None:
    reply = http.get(path)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["loc"] == ["path", "execution_id"]
    assert http.get("/healthz").status_code == 200


def test_sdk_routes_chainline_does_not_serve_yet_answer_501_naming_themselves(
    stack: Stack, http: httpx.Client
) -> None:
    client = Mistral(api_key="test-key", server_url=stack.base_url)
    for call in (client.workflows.deployments.list_deployments,):
        with pytest.raises(SDKError) as raised:
            call()
        assert raised.value.status_code == 501
    reply = http.get("/v1/workflows/executions")
    assert reply.status_code == 501
    assert reply.json() == {
        "detail": "GET /v1/workflows/executions is not implemented by Chainline yet",
        "code": "WF_1300",
    }
    # And none of those words can be a workflow's name.
    assert http.get("/v1/workflows/deployments/some-name").status_code == 501
    assert http.get("/v1/workflows/runs").status_code == 200


def test_the_caller_is_stored_as_a_key_id_never_a_piece_of_the_key(
    http: httpx.Client,
) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    started = http.post(
        "/v1/workflows/sequential-sum/execute",
        json={"execution_id": execution_id(), "input": {"values": [1]}},
        headers={"authorization": f"Bearer {token}"},
    ).json()
    assert started["user_id"] == key_id(token)
    record = wait_for_end(http, started["execution_id"])
    assert token[:6] not in str(record["user_id"]) and token[-6:] not in str(record["user_id"])


def test_the_docs_load_every_asset_from_the_server_itself(http: httpx.Client) -> None:
    for page in ("/docs", "/redoc"):
        html = http.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            assert http.get(asset).status_code == 200, asset
    schema: dict[str, Any] = http.get("/openapi.json").json()
    execute = schema["paths"]["/v1/workflows/{workflow_name}/execute"]["post"]["responses"]
    assert {"200", "401", "404", "408", "409", "413", "422", "503"} <= set(execute)
