"""Worker death, duplicate messages and bad definitions, on the stack users get by default."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import Stack, history, start, types, wait_for_end
from tests.support import CHAINLINE, wait_until
from tests.workflows import calls


def test_a_pool_process_killed_mid_activity_is_recorded_lost_and_retried(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "killable", {"folder": str(tmp_path)})
    pid_file = tmp_path / "victim-pid"
    victim = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the pid"))
    assert victim != stack.processes["worker"].pid  # a pool process, not the main worker
    os.kill(victim, signal.SIGKILL)

    # Its worker saw it die: retried at once, not after its 60 s start-to-close timeout.
    record = wait_for_end(http, started["execution_id"], timeout=30)
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"call": 2}
    events = history(http, started["execution_id"])
    assert types(events).count("ACTIVITY_TASK_STARTED") == 2
    assert types(events).count("ACTIVITY_TASK_COMPLETED") == 1
    assert types(events).count("WORKFLOW_EXECUTION_COMPLETED") == 1
    (retrying,) = [e for e in events if e["event_type"] == "ACTIVITY_TASK_RETRYING"]
    assert retrying["attributes"]["attempt"] == 1
    assert retrying["attributes"]["failure"]["type"] == "WorkerLost"
    assert calls(tmp_path) == 2


def test_the_same_activity_message_delivered_twice_records_one_outcome(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "held", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")
    celery = stack.celery_client()
    message = ("activity.wait_for_release", [started["run_id"], 1])
    try:
        duplicate = celery.send_task(message[0], args=message[1])
        assert duplicate.get(timeout=30) == "attempt in progress elsewhere"

        (tmp_path / "release").write_text("go")
        record = wait_for_end(http, started["execution_id"])
        assert record["status"] == "COMPLETED" and record["result"] == "released"

        late = celery.send_task(message[0], args=message[1])
        assert late.get(timeout=30) == "run closed"
    finally:
        celery.close()
    event_types = types(history(http, started["execution_id"]))
    assert event_types.count("ACTIVITY_TASK_STARTED") == 1
    assert event_types.count("ACTIVITY_TASK_COMPLETED") == 1
    assert event_types.count("WORKFLOW_EXECUTION_COMPLETED") == 1


def test_a_long_activity_shows_as_started_while_it_runs(http: httpx.Client, tmp_path: Path) -> None:
    started = start(http, "held", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the activity to start")
    # The claim that started it wrote the start, before the activity ran.
    assert "ACTIVITY_TASK_STARTED" in types(history(http, started["execution_id"]))
    assert not (tmp_path / "finished").exists()
    (tmp_path / "release").write_text("go")
    assert wait_for_end(http, started["execution_id"])["status"] == "COMPLETED"
    event_types = types(history(http, started["execution_id"]))
    assert event_types.count("ACTIVITY_TASK_STARTED") == 1
    assert event_types.index("ACTIVITY_TASK_STARTED") < event_types.index("ACTIVITY_TASK_COMPLETED")


def test_a_whole_worker_killed_mid_activity_is_recovered_at_the_attempt_s_deadline(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    started = start(http, "worker-dies", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "victim-pid").exists(), what="the first attempt")
    worker = stack.processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool: a lost machine
    worker.wait(timeout=10)
    stack.start("worker")

    record = wait_for_end(http, started["execution_id"], timeout=60)
    assert record["status"] == "COMPLETED"
    assert record["result"] == {"call": 2}
    events = history(http, started["execution_id"])
    assert types(events).count("ACTIVITY_TASK_COMPLETED") == 1
    (retrying,) = [e for e in events if e["event_type"] == "ACTIVITY_TASK_RETRYING"]
    # Nobody saw it die: its start-to-close deadline (3 s) passed without an outcome.
    assert retrying["attributes"]["failure"]["type"] == "StartToCloseTimeout"


@pytest.mark.parametrize("kind", ["nan", "infinity", "nul"])
def test_a_result_postgres_cannot_store_fails_the_activity_once(
    http: httpx.Client, tmp_path: Path, kind: str
) -> None:
    started = start(http, "unstorable-result", {"folder": str(tmp_path), "kind": kind})
    record = wait_for_end(http, started["execution_id"])
    assert record["status"] == "FAILED"
    assert record["error"]["type"] == "ActivityError"
    events = history(http, started["execution_id"])
    (failed,) = [e for e in events if e["event_type"] == "ACTIVITY_TASK_FAILED"]
    assert failed["attributes"]["failure"]["type"] == "InvalidPayload"
    assert failed["attributes"]["attempt"] == 1
    assert calls(tmp_path) == 1


def test_a_worker_refuses_to_start_with_two_activities_of_one_name(stack: Stack) -> None:
    env = {
        **stack.env,
        "CHAINLINE_WORKFLOWS": "tests.duplicates.first,tests.duplicates.second",
        # Should it start after all, it must not take the stack's work.
        "CHAINLINE_QUEUE": f"{stack.env['CHAINLINE_QUEUE']}-duplicates",
    }
    worker = subprocess.run(
        [CHAINLINE, "worker", "--concurrency=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode != 0
    assert "tests.duplicates.first" in worker.stderr and "tests.duplicates.second" in worker.stderr
    assert "send_report" in worker.stderr
