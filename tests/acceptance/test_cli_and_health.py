"""The `chainline` CLI and the health probes, against the running stack."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from tests.acceptance.conftest import Stack, execution_id


def chainline(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chainline", "--base-url", stack.base_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=stack.env,
    )


def test_health_probes(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "schema": "ok", "broker": "ok"}


def test_run_wait_prints_the_result(stack: Stack, tmp_path: Path) -> None:
    done = chainline(stack, "run", "sequential-sum", "--input", '{"values": [2, 3]}', "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"total": 5}
    input_file = tmp_path / "input.json"
    input_file.write_text('{"values": [4]}')
    chosen = execution_id()
    done = chainline(
        stack,
        "run",
        "sequential-sum",
        "--input",
        f"@{input_file}",
        "--id",
        chosen,
        "--wait",
        "--json",
    )
    record = json.loads(done.stdout)
    assert record["execution_id"] == chosen and record["result"] == {"total": 4}


def test_get_history_and_workflows(stack: Stack) -> None:
    chosen = execution_id()
    assert (
        chainline(
            stack, "run", "sequential-sum", "--input", '{"values": [1]}', "--id", chosen, "--wait"
        ).returncode
        == 0
    )
    shown = chainline(stack, "get", chosen)
    assert "status     COMPLETED" in shown.stdout
    assert json.loads(chainline(stack, "get", chosen, "--json").stdout)["status"] == "COMPLETED"
    events = chainline(stack, "history", chosen).stdout.splitlines()
    assert "WORKFLOW_EXECUTION_STARTED" in events[0]
    assert "WORKFLOW_EXECUTION_COMPLETED" in events[-1]
    assert "sequential-sum" in chainline(stack, "workflows").stdout


def test_failures_are_one_line_and_a_non_zero_exit(stack: Stack) -> None:
    missing = chainline(stack, "get", "no-such-execution")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "Error: HTTP 404 WF_1100: Execution 'no-such-execution' not found"
    )
    failed = chainline(stack, "run", "raises", "--input", '{"reason": "nope"}', "--wait")
    assert failed.returncode == 1
    assert "status     FAILED" in failed.stdout and "ValueError: nope" in failed.stdout
    invalid = chainline(stack, "run", "order-approval", "--input", '{"order_id": "o"}')
    assert invalid.returncode == 1
    assert invalid.stderr.startswith("Error: HTTP 422: body.input.amount: Field required")
    bad_json = chainline(stack, "run", "sequential-sum", "--input", "{nope")
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    unreachable = subprocess.run(
        ["chainline", "--base-url", "http://127.0.0.1:9", "workflows"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("Error: cannot reach the Chainline API")
    assert "Traceback" not in missing.stderr + invalid.stderr + unreachable.stderr
