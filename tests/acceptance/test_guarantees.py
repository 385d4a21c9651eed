"""What Chainline never does, shown on a stack whose own Postgres and Redis the tests break.

Each test is one way work could be lost, run twice or left parked: Redis forgetting,
Postgres going away or read-only, a duplicate message, deadlines falling due while every
worker is busy, a deploy that breaks replay. Every execution must end in the right
status, and no activity whose success was recorded may run again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from celery import Celery

from app.settings import libpq_url
from tests.acceptance.conftest import (
    Stack,
    execution_id,
    history,
    launch_stack,
    start,
    types,
    wait_for_end,
)
from tests.servers import PrivatePostgres, PrivateRedis
from tests.support import alive, wait_until
from tests.workflows import calls

SETTINGS = {
    # Lost messages are sent again after this long: short, so that the tests are.
    "CHAINLINE_STALLED_AFTER_SECONDS": "3",
    "CHAINLINE_WORKER_CONCURRENCY": "2",
    "CHAINLINE_WORKFLOWS": "tests.workflows,tests.deploys.original",
}
# Execution timeouts must be enforced this close to their deadline, busy workers or not.
DEADLINE_SLACK_SECONDS = 5.0


@dataclass
class Faults:
    stack: Stack
    postgres: PrivatePostgres
    redis: PrivateRedis
    database_url: str


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    root = tmp_path_factory.mktemp("faults")
    postgres = PrivatePostgres(root / "postgres")
    redis = PrivateRedis(root / "redis")
    try:
        postgres.start()
        redis.start()
        database_url = postgres.create_database("chainline")
        with launch_stack(database_url, redis.url, root, SETTINGS) as stack:
            yield Faults(stack, postgres, redis, database_url)
    finally:
        redis.stop()
        postgres.destroy()


@pytest.fixture
def http(faults: Faults) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faults.stack.base_url, timeout=30) as client:
        yield client


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _count(events: list[dict[str, Any]], event_type: str, seq: int | None = None) -> int:
    return sum(
        1
        for e in events
        if e["event_type"] == event_type and (seq is None or e["attributes"].get("seq") == seq)
    )


def _completed_once_each(events: list[dict[str, Any]], activities: int) -> None:
    for seq in range(1, activities + 1):
        assert _count(events, "ACTIVITY_TASK_COMPLETED", seq) == 1, types(events)


def _folders(root: Path, *names: str) -> list[Path]:
    """A folder per execution, for the files its activities count into."""
    folders = [root / name for name in names]
    for folder in folders:
        folder.mkdir()
    return folders


def _held(http: httpx.Client, folder: Path) -> dict[str, Any]:
    """Start counted-then-held and wait until its second activity runs."""
    started = start(http, "counted-then-held", {"folder": str(folder)})
    wait_until(lambda: (folder / "started").exists(), timeout=30, what="the held activity")
    return started


def _finish_held(http: httpx.Client, folder: Path, started: dict[str, Any]) -> list[Any]:
    (folder / "release").write_text("go")
    record = wait_for_end(http, started["execution_id"], timeout=90)
    assert record["status"] == "COMPLETED", record
    events = history(http, started["execution_id"])
    _completed_once_each(events, 3)
    assert calls(folder, "calls-first") == 1
    assert calls(folder, "calls-last") == 1
    return events


# 1. A finished activity is never run again, whatever Redis forgets or a message says.


def test_a_finished_activity_never_runs_again_when_redis_forgets(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    started = _held(http, tmp_path)
    faults.redis.flush()
    celery = faults.stack.celery_client()
    try:
        # Its first message again, stamped an hour ahead (a publisher whose clock is
        # ahead), as a message from before this version carried it.
        ticket = {
            "execution_id": started["execution_id"],
            "activity_name": "counted",
            "input": {"folder": str(tmp_path), "label": "first"},
            "lease_seconds": 70.0,
            "issued_at": time.time() + 3600,
        }
        again = celery.send_task(
            "activity.counted", args=[started["run_id"], 1], kwargs={"ticket": ticket}
        )
        again.get(timeout=30)
    finally:
        celery.close()
    assert calls(tmp_path, "calls-first") == 1
    _finish_held(http, tmp_path, started)


# 3. A running attempt is never claimed twice.


def _send_duplicate(celery: Celery, started: dict[str, Any], folder: Path) -> None:
    """The held activity's message again; wait until it is handled, or runs it twice."""
    duplicate = celery.send_task("activity.counted_and_held", args=[started["run_id"], 2])
    wait_until(
        lambda: duplicate.ready() or calls(folder, "calls-held") > 1,
        timeout=30,
        what="the duplicate message to be handled",
    )


def test_a_duplicate_message_never_claims_a_running_attempt_again(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    started = _held(http, tmp_path)
    faults.redis.flush()
    celery = faults.stack.celery_client()
    try:
        _send_duplicate(celery, started, tmp_path)
    finally:
        celery.close()
    assert calls(tmp_path, "calls-held") == 1
    events = _finish_held(http, tmp_path, started)
    assert _count(events, "ACTIVITY_TASK_STARTED", 2) == 1
    assert calls(tmp_path, "calls-held") == 1


def test_a_worker_sharing_the_hostname_leaves_a_running_attempt_alone(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    # Two executions keep both processes of the first worker busy, so that the
    # duplicate goes to the second: a container with the same hostname and pids of
    # its own (a PID namespace), where the first worker's pids do not exist.
    folders = _folders(tmp_path, "one", "two")
    runs = [_held(http, folder) for folder in folders]
    stack = faults.stack
    stack.start(
        "worker-elsewhere", "unshare --pid --fork --mount-proc chainline worker -n elsewhere@%h"
    )
    celery = stack.celery_client()
    try:
        wait_until(
            lambda: celery.control.ping(destination=[f"elsewhere@{os.uname().nodename}"]),
            timeout=60,
            what="the second worker",
        )
        _send_duplicate(celery, runs[0], folders[0])
    finally:
        celery.close()
    assert calls(folders[0], "calls-held") == 1
    for folder, started in zip(folders, runs, strict=True):
        _finish_held(http, folder, started)
        assert calls(folder, "calls-held") == 1
    stack.stop_process("worker-elsewhere")


# 2. A success in hand is written once Postgres is back, never run again.


def test_an_outcome_waits_out_a_postgres_outage_instead_of_running_again(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    started = _held(http, tmp_path)
    faults.postgres.stop()
    try:
        (tmp_path / "release").write_text("go")
        # The API says so, as JSON, and asks to be tried again.
        for reply in (
            http.post("/v1/workflows/sequential-sum/execute", json={"input": {"values": [1]}}),
            http.get(f"/v1/workflows/executions/{started['execution_id']}"),
        ):
            assert reply.status_code == 503, reply.text
            assert reply.json()["code"] == "WF_1200" and reply.headers["retry-after"]
        time.sleep(30)  # the outage: longer than any fixed number of quick retries
    finally:
        faults.postgres.start()
    events = _finish_held(http, tmp_path, started)
    assert calls(tmp_path, "calls-held") == 1
    assert _count(events, "ACTIVITY_TASK_STARTED", 2) == 1
    assert _count(events, "ACTIVITY_TASK_RETRYING") == 0


def test_an_outcome_waits_out_a_read_only_postgres(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    # What a demoted primary answers every write with, until the failover ends.
    started = _held(http, tmp_path)
    faults.postgres.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    faults.postgres.execute("SELECT pg_reload_conf()")
    try:
        (tmp_path / "release").write_text("go")
        log_before = faults.stack.log("worker").count("ReadOnlySqlTransaction")
        wait_until(
            lambda: faults.stack.log("worker").count("ReadOnlySqlTransaction") > log_before,
            timeout=30,
            what="the worker to meet the read-only database",
        )
    finally:
        faults.postgres.execute("ALTER SYSTEM RESET default_transaction_read_only")
        faults.postgres.execute("SELECT pg_reload_conf()")
    events = _finish_held(http, tmp_path, started)
    assert calls(tmp_path, "calls-held") == 1
    assert _count(events, "ACTIVITY_TASK_RETRYING") == 0


# 4. Deadlines are enforced by beat, not by whichever worker is free.


def test_execution_timeouts_land_while_every_pool_process_is_busy(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    folders = _folders(tmp_path, "one", "two")
    runs = [start(http, "overdue-sleeper", {"folder": str(f), "seconds": 20}) for f in folders]
    for folder in folders:
        wait_until(lambda f=folder: (f / "sleeper-pid").exists(), what="a sleeper to start")
    for started in runs:
        record = wait_for_end(http, started["execution_id"], timeout=20)
        assert record["status"] == "TIMED_OUT"
        late = (_parse(record["end_time"]) - _parse(record["start_time"])).total_seconds()
        assert late <= 3 + DEADLINE_SLACK_SECONDS, late
        events = history(http, started["execution_id"])
        assert types(events)[-1] == "WORKFLOW_EXECUTION_TIMED_OUT"
        assert "ACTIVITY_TASK_COMPLETED" not in types(events)
    # The sleepers were stopped, and their pool slots serve other work at once.
    for folder in folders:
        pid = int((folder / "sleeper-pid").read_text())
        wait_until(lambda p=pid: not alive(p), timeout=10, what=f"sleeper {pid} to stop")
    quick = start(http, "sequential-sum", {"values": [1, 2]})
    assert wait_for_end(http, quick["execution_id"], timeout=10)["status"] == "COMPLETED"
    for folder in folders:
        assert not (folder / "finished").exists()


def test_one_locked_run_does_not_hold_up_the_timeouts_of_others(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    folders = _folders(tmp_path, "locked", "free")
    locked, free = (start(http, "short-deadline", {"folder": str(f)}) for f in folders)
    with psycopg.connect(libpq_url(faults.database_url)) as holder:
        # A transaction holding the run's lock, as a stuck writer would.
        holder.execute("SELECT 1 FROM runs WHERE run_id = %s FOR UPDATE", (locked["run_id"],))
        record = wait_for_end(http, free["execution_id"], timeout=20)
        assert record["status"] == "TIMED_OUT"
        late = (_parse(record["end_time"]) - _parse(record["start_time"])).total_seconds()
        assert late <= 2 + DEADLINE_SLACK_SECONDS, late
        still = http.get(f"/v1/workflows/executions/{locked['execution_id']}").json()
        assert still["end_time"] is None
        holder.rollback()
    assert wait_for_end(http, locked["execution_id"], timeout=20)["status"] == "TIMED_OUT"
    for folder in folders:
        (folder / "release").write_text("go")


# 5 and 6. A workflow task that fails is recorded once and retried, so that deploying a
# fix resumes the run; replay compares what each activity call asks for.


def _deploy(stack: Stack, module: str) -> None:
    stack.restart("worker", CHAINLINE_WORKFLOWS=f"tests.workflows,{module}")
    stack.wait_for_worker()


def _workflow_task_failures(http: httpx.Client, started: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in history(http, started["execution_id"])
        if e["event_type"] == "WORKFLOW_TASK_FAILED"
    ]


def _retried_in_log(stack: Stack, run_id: str, times: int) -> bool:
    return stack.log("worker").count(f"workflow task of run {run_id} failed") >= times


@pytest.mark.parametrize(
    ("broken", "error_type"),
    [
        ("tests.deploys.swapped", "NonDeterminismError"),
        ("tests.deploys.wrong_arity", "TypeError"),
        ("tests.deploys.not_json", "InvalidPayload"),
    ],
)
def test_a_failing_workflow_task_is_retried_until_a_fix_is_deployed(
    faults: Faults, http: httpx.Client, tmp_path: Path, broken: str, error_type: str
) -> None:
    stack = faults.stack
    started = start(http, "deploy-check", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the run to wait on its release")
    try:
        _deploy(stack, broken)
        (tmp_path / "release").write_text("go")
        wait_until(
            lambda: _retried_in_log(stack, started["run_id"], 3),
            timeout=60,
            what="the broken workflow task to be retried",
        )
        (failure,) = _workflow_task_failures(http, started)
        assert failure["attributes"]["failure"]["type"] == error_type
        record = http.get(f"/v1/workflows/executions/{started['execution_id']}").json()
        assert record["status"] in ("RUNNING", "RETRYING_AFTER_ERROR")
        assert record["end_time"] is None
    finally:
        _deploy(stack, "tests.deploys.original")
    record = wait_for_end(http, started["execution_id"], timeout=90)
    assert record["status"] == "COMPLETED"
    assert record["result"] == ["a", "released", "c"]
    assert len(_workflow_task_failures(http, started)) == 1


def test_a_swapped_call_is_named_in_the_non_determinism_failure(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    stack = faults.stack
    started = start(http, "deploy-check", {"folder": str(tmp_path)})
    wait_until(lambda: (tmp_path / "started").exists(), what="the run to wait on its release")
    try:
        _deploy(stack, "tests.deploys.swapped")
        (tmp_path / "release").write_text("go")
        (failure,) = wait_until(lambda: _workflow_task_failures(http, started), timeout=60)
    finally:
        _deploy(stack, "tests.deploys.original")
    message = failure["attributes"]["failure"]["message"]
    # Both calls: the one history recorded and the one the code makes now.
    assert "'tag'" in message and '"a"' in message and '"c"' in message, message
    assert wait_for_end(http, started["execution_id"], timeout=90)["status"] == "COMPLETED"


def test_a_reset_recovers_a_run_whose_workflow_task_fails_on_the_code_deployed_now(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    """The deploy changed the workflow for good: its first task now asks for other
    activities than history recorded. An operator resets to the last point the new code
    agrees with (the first workflow task); the new run finishes on the new code."""
    stack = faults.stack
    started = start(http, "deploy-check", {"folder": str(tmp_path)})
    execution_id = started["execution_id"]
    wait_until(lambda: (tmp_path / "started").exists(), what="the run to wait on its release")
    try:
        _deploy(stack, "tests.deploys.swapped")
        (tmp_path / "release").write_text("go")
        (failure,) = wait_until(lambda: _workflow_task_failures(http, started), timeout=60)
        assert failure["attributes"]["failure"]["type"] == "NonDeterminismError"
        first_task = next(
            int(e["event_id"])
            for e in history(http, execution_id)
            if e["event_type"] == "WORKFLOW_TASK_COMPLETED"
        )
        reply = http.post(
            f"/v1/workflows/executions/{execution_id}/reset",
            json={"event_id": first_task, "reason": "recover on the new code"},
        )
        assert reply.status_code == 204, reply.text
        record = wait_for_end(http, execution_id, timeout=60)
        assert record["status"] == "COMPLETED"
        assert record["result"] == ["c", "released", "a"]
        assert _workflow_task_failures(http, {"execution_id": execution_id}) == []
        old = http.get(f"/v1/workflows/runs/{started['run_id']}").json()
        assert old["status"] == "TERMINATED"
    finally:
        _deploy(stack, "tests.deploys.original")


def test_a_workflow_unknown_to_the_worker_runs_once_it_is_deployed(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    stack = faults.stack
    try:
        stack.restart("worker", CHAINLINE_WORKFLOWS="tests.workflows,tests.deploys.activities")
        stack.wait_for_worker()
        started = start(http, "deploy-check", {"folder": str(tmp_path)})
        (failure,) = wait_until(lambda: _workflow_task_failures(http, started), timeout=30)
        assert failure["attributes"]["failure"]["type"] == "UnknownWorkflow"
        (tmp_path / "release").write_text("go")
    finally:
        _deploy(stack, "tests.deploys.original")
    record = wait_for_end(http, started["execution_id"], timeout=90)
    assert record["status"] == "COMPLETED"
    assert record["result"] == ["a", "released", "c"]


# Messages lost with Redis, or never published, are sent again from Postgres.


def _start_held_runs(
    http: httpx.Client, root: Path, count: int
) -> list[tuple[Path, dict[str, Any]]]:
    folders = _folders(root, *(f"run-{index}" for index in range(count)))
    runs = [(f, start(http, "counted-then-held", {"folder": str(f)})) for f in folders]
    # Two run their held activity; the others wait in the queue, or earlier.
    wait_until(
        lambda: sum((folder / "started").exists() for folder, _ in runs) >= 2,
        timeout=30,
        what="two held activities to start",
    )
    return runs


def _finish_all(http: httpx.Client, runs: list[tuple[Path, dict[str, Any]]]) -> None:
    for folder, _ in runs:
        (folder / "release").write_text("go")
    for folder, started in runs:
        record = wait_for_end(http, started["execution_id"], timeout=120)
        assert record["status"] == "COMPLETED", record
        assert record["result"] == ["first", "released", "last"]
        _completed_once_each(history(http, started["execution_id"]), 3)
        assert calls(folder, "calls-last") == 1


def test_redis_flushed_mid_run_loses_no_execution(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    runs = _start_held_runs(http, tmp_path, 4)
    faults.redis.flush()
    _finish_all(http, runs)
    for folder, _ in runs:
        assert calls(folder, "calls-first") == 1
        # Flushing closes no connection: the attempts that ran went on, and ran once.
        assert calls(folder, "calls-held") == 1


def test_redis_restarted_empty_loses_no_execution(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    runs = _start_held_runs(http, tmp_path, 4)
    first_done = {folder: calls(folder, "calls-first") for folder, _ in runs}
    faults.redis.stop()
    faults.redis.start()
    _finish_all(http, runs)
    for folder, _ in runs:
        # What had succeeded before the restart never ran again.
        if first_done[folder]:
            assert calls(folder, "calls-first") == 1


def test_an_execution_whose_first_message_was_never_published_still_runs(
    faults: Faults, http: httpx.Client
) -> None:
    # What the API leaves behind when it dies between its commit and its publish.
    from app.engine.executions import insert_execution
    from app.storage.db import make_engine
    from app.workflows.registry import load_workflow_modules

    registry = load_workflow_modules(["tests.workflows"])
    engine = make_engine(faults.database_url)
    try:
        record = insert_execution(
            engine,
            registry.workflow("sequential-sum"),
            execution_id=execution_id(),
            input_value={"values": [20, 22]},
        )
    finally:
        engine.dispose()
    final = wait_for_end(http, record.execution_id, timeout=60)
    assert final["status"] == "COMPLETED"
    assert final["result"] == {"total": 42}


# 6. A durable timer lives in Postgres: neither its worker nor the broker holds it.


def test_a_sleep_survives_its_worker_killed_and_the_broker_flushed(
    faults: Faults, http: httpx.Client, tmp_path: Path
) -> None:
    stack = faults.stack
    started = start(http, "sleeper", {"folder": str(tmp_path), "seconds": 4})
    execution = started["execution_id"]
    wait_until(
        lambda: "TIMER_STARTED" in types(history(http, execution)),
        timeout=30,
        what="the sleep's timer",
    )
    stack.stop_process("worker", signal.SIGKILL)
    faults.redis.flush()
    stack.start("worker")
    record = wait_for_end(http, execution, timeout=60)
    assert record["status"] == "COMPLETED", record
    assert record["result"]["slept"] == 4
    events = history(http, execution)
    assert _count(events, "TIMER_FIRED") == 1
    started_at = _parse(started["start_time"])
    assert _parse(record["result"]["woke_at"]) - started_at >= timedelta(seconds=4)
