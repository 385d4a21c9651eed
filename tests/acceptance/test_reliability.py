"""Worker death and message redelivery: nothing lost, nothing recorded twice."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from app.engine.executions import start_execution
from app.settings import normalize_database_url
from app.storage.db import make_engine
from app.workflows.registry import load_workflow_modules
from tests.acceptance.conftest import Stack, execution_id, history, wait_for_end
from tests.support import wait_until


def _types(events: list[dict[str, object]]) -> list[object]:
    return [e["event_type"] for e in events]


def test_worker_process_killed_mid_activity_finishes_exactly_once(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = http.post(
        "/v1/workflows/killable/execute",
        json={"execution_id": execution_id(), "input": {"folder": str(tmp_path)}},
    ).json()
    pid_file = tmp_path / "victim-pid"
    victim = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the pid"))
    assert victim != stack.processes["worker"].pid  # a pool process, not the main worker
    os.kill(victim, signal.SIGKILL)

    record = wait_for_end(http, started["execution_id"], timeout=60)
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"call": 2}
    events = history(http, started["execution_id"])
    types = _types(events)
    assert types.count("ACTIVITY_TASK_STARTED") == 2
    assert types.count("ACTIVITY_TASK_COMPLETED") == 1
    assert types.count("WORKFLOW_EXECUTION_COMPLETED") == 1
    (retrying,) = [e for e in events if e["event_type"] == "ACTIVITY_TASK_RETRYING"]
    assert retrying["attributes"]["attempt"] == 1
    assert retrying["attributes"]["failure"]["type"] == "WorkerLost"
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_the_same_activity_message_delivered_twice_records_one_outcome(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = http.post(
        "/v1/workflows/held/execute",
        json={"execution_id": execution_id(), "input": {"folder": str(tmp_path)}},
    ).json()
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")
    celery = stack.celery_client()
    message = ("activity.wait_for_release", [started["run_id"], 1])

    duplicate = celery.send_task(message[0], args=message[1])
    assert duplicate.get(timeout=30) == "attempt in progress elsewhere"

    (tmp_path / "release").write_text("go")
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "COMPLETED" and record["result"] == "released"

    late = celery.send_task(message[0], args=message[1])
    assert late.get(timeout=30) == "run closed"
    types = _types(history(http, started["execution_id"]))
    assert types.count("ACTIVITY_TASK_STARTED") == 1
    assert types.count("ACTIVITY_TASK_COMPLETED") == 1
    assert types.count("WORKFLOW_EXECUTION_COMPLETED") == 1
    celery.close()


def test_a_long_activity_shows_as_started_while_it_runs(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = http.post(
        "/v1/workflows/held/execute",
        json={"execution_id": execution_id(), "input": {"folder": str(tmp_path)}},
    ).json()
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")

    def started_in_history() -> bool:
        return "ACTIVITY_TASK_STARTED" in _types(history(http, started["execution_id"]))

    # Written by the worker's start recorder (CHAINLINE_RECORD_STARTED_AFTER_SECONDS).
    wait_until(started_in_history, timeout=15, what="ACTIVITY_TASK_STARTED while running")
    assert not (tmp_path / "finished").exists()
    (tmp_path / "release").write_text("go")
    assert wait_for_end(http, started["execution_id"])["status"] == "COMPLETED"
    types = _types(history(http, started["execution_id"]))
    assert types.count("ACTIVITY_TASK_STARTED") == 1
    assert types.index("ACTIVITY_TASK_STARTED") < types.index("ACTIVITY_TASK_COMPLETED")


def test_an_execution_whose_first_messages_were_never_published_still_runs(
    stack: Stack, http: httpx.Client
) -> None:
    # What the API leaves behind if it dies between its commit and its publish: with
    # the first workflow task still to run, or with its first activity scheduled.
    registry = load_workflow_modules(["tests.workflows"])
    engine = make_engine(normalize_database_url(stack.env["CHAINLINE_DATABASE_URL"]))
    try:
        stranded = [
            start_execution(
                engine,
                registry.workflow("sequential-sum"),
                execution_id=execution_id(),
                input_value={"values": [20, 22]},
                registry=inline,
            )[0].execution_id
            for inline in (None, registry)
        ]
    finally:
        engine.dispose()
    for stranded_id in stranded:
        final = wait_for_end(http, stranded_id, timeout=60)
        assert final["status"] == "COMPLETED"
        assert final["result"] == {"total": 42}


def test_a_whole_worker_killed_mid_activity_is_recovered_by_another(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = http.post(
        "/v1/workflows/worker-dies/execute",
        json={"execution_id": execution_id(), "input": {"folder": str(tmp_path)}},
    ).json()
    wait_until(lambda: (tmp_path / "victim-pid").exists(), what="the first attempt")
    worker = stack.processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool: a lost machine
    worker.wait(timeout=10)
    stack.start("worker")

    record = wait_for_end(http, started["execution_id"], timeout=90)
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"call": 2}
    events = history(http, started["execution_id"])
    types = _types(events)
    assert types.count("ACTIVITY_TASK_COMPLETED") == 1
    (retrying,) = [e for e in events if e["event_type"] == "ACTIVITY_TASK_RETRYING"]
    assert retrying["attributes"]["failure"]["type"] == "WorkerLost"
