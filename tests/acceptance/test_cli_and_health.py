"""The `chainline` CLI and the health probes, against the running stack."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx

from tests.acceptance.conftest import Stack, execution_id
from tests.support import CHAINLINE, wait_until


def chainline(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHAINLINE, "--base-url", stack.base_url, *args],
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
    # Which execution it was, on stderr so that stdout stays the result alone.
    started = re.fullmatch(r"started (\S+)\n", done.stderr)
    assert started is not None, done.stderr
    shown = json.loads(chainline(stack, "get", started.group(1), "--json").stdout)
    assert shown["result"] == {"total": 5}
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
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.match(when + "  WORKFLOW_EXECUTION_STARTED", events[0]), events[0]
    assert re.match(when + "  WORKFLOW_EXECUTION_COMPLETED", events[-1]), events[-1]
    assert all(re.match(when + "  [A-Z_]+", line) for line in events), events
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
        [CHAINLINE, "--base-url", "http://127.0.0.1:9", "workflows"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("Error: cannot reach the Chainline API")
    assert "Traceback" not in missing.stderr + invalid.stderr + unreachable.stderr


def test_connection_options_work_after_the_subcommand_too(stack: Stack) -> None:
    listed = subprocess.run(
        [CHAINLINE, "workflows", "--base-url", stack.base_url, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**stack.env, "CHAINLINE_BASE_URL": "http://127.0.0.1:9"},
    )
    assert listed.returncode == 0, listed.stderr
    assert "sequential-sum" in {w["name"] for w in json.loads(listed.stdout)["workflows"]}
    # After the subcommand it wins over the one before it.
    overridden = subprocess.run(
        [CHAINLINE, "--base-url", stack.base_url, "get", "x", "--base-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert overridden.stderr.startswith(
        "Error: cannot reach the Chainline API at http://127.0.0.1:9"
    )


def test_an_unreadable_input_file_is_one_line(stack: Stack, tmp_path: Path) -> None:
    missing = chainline(stack, "run", "sequential-sum", "--input", f"@{tmp_path}/missing.json")
    assert missing.returncode == 2
    assert missing.stderr == (
        f"Error: --input: cannot read {tmp_path}/missing.json: No such file or directory\n"
    )
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    binary = chainline(stack, "run", "sequential-sum", "--input", f"@{tmp_path}/binary.json")
    assert binary.returncode == 2
    assert binary.stderr == f"Error: --input: cannot read {tmp_path}/binary.json: not UTF-8 text\n"


def test_signal_query_update_cancel_and_terminate_from_the_cli(
    stack: Stack, tmp_path: Path
) -> None:
    saga = chainline(
        stack,
        "run",
        "approval-saga",
        "--input",
        json.dumps({"folder": str(tmp_path), "item": "cli", "wait_seconds": 120}),
        "--json",
    )
    chosen = json.loads(saga.stdout)["execution_id"]
    wait_until(
        lambda: "TIMER_STARTED" in chainline(stack, "history", chosen).stdout,
        timeout=30,
        what="the saga to wait",
    )
    status = chainline(stack, "query", chosen, "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"decision": None, "notes": [], "limit": 100}
    updated = chainline(stack, "update", chosen, "set-limit", "--input", '{"limit": 5}')
    assert json.loads(updated.stdout) == {"old": 100, "new": 5}
    rejected = chainline(stack, "update", chosen, "set-limit", "--input", '{"limit": -1}')
    assert rejected.returncode == 1
    assert rejected.stderr.strip().startswith("Error: HTTP 400 WF_1105: Update ")
    assert "BadLimit: the limit must be positive" in rejected.stderr
    sent = chainline(stack, "signal", chosen, "note", "--input", '{"text": "hi"}', "--json")
    assert json.loads(sent.stdout) == {"message": "Signal accepted"}
    unknown = chainline(stack, "signal", chosen, "approve")
    assert unknown.returncode == 1 and "its signals: 'decide', 'note'" in unknown.stderr
    not_object = chainline(stack, "signal", chosen, "note", "--input", "[1]")
    assert not_object.returncode == 2 and "JSON object" in not_object.stderr
    cancelled = chainline(stack, "cancel", chosen)
    assert (
        cancelled.returncode == 0 and cancelled.stdout.strip() == f"cancel requested for {chosen}"
    )

    sleeper = chainline(
        stack, "run", "sleeper", "--input", json.dumps({"folder": str(tmp_path), "seconds": 600})
    )
    other = sleeper.stdout.split()[1]
    assert chainline(stack, "terminate", other).returncode == 0
    assert json.loads(chainline(stack, "get", other, "--json").stdout)["status"] == "TERMINATED"
    again = chainline(stack, "terminate", other)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"Error: HTTP 409 WF_1102: Execution '{other}' is TERMINATED: it takes no terminate"
    )
    assert "Traceback" not in again.stderr + unknown.stderr + rejected.stderr


def test_schedules_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    schedule_id = f"cli-{execution_id()}"
    created = chainline(
        stack,
        "schedules",
        "create",
        "sequential-sum",
        "--id",
        schedule_id,
        "--cron",
        "0 9 * * *",
        "--time-zone",
        "Europe/Paris",
        "--input",
        '{"values": [4]}',
        "--overlap",
        "buffer-one",
        "--max-executions",
        "3",
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"scheduled {schedule_id}"
    shown = chainline(stack, "schedules", "show", schedule_id)
    assert "cron 0 9 * * * in Europe/Paris" in shown.stdout
    assert "overlap    buffer-one" in shown.stdout
    assert "remaining  3 of 3" in shown.stdout
    assert shown.stdout.count("next       ") == 3
    as_json = json.loads(chainline(stack, "schedules", "show", schedule_id, "--json").stdout)
    assert as_json["policy"]["overlap"] == 2

    paused = chainline(stack, "schedules", "pause", schedule_id, "--note", "holiday")
    assert paused.stdout.strip() == f"paused {schedule_id}"
    listed = chainline(stack, "schedules", "list", "--status", "paused")
    assert re.search(rf"^{schedule_id}\s+sequential-sum\s+paused", listed.stdout, re.MULTILINE)
    assert chainline(stack, "schedules", "resume", schedule_id).returncode == 0
    triggered = chainline(stack, "schedules", "trigger", schedule_id, "--overlap", "allow-all")
    assert triggered.stdout.strip() == f"triggered {schedule_id}"
    started = wait_until(
        lambda: json.loads(chainline(stack, "schedules", "show", schedule_id, "--json").stdout)[
            "recent_executions"
        ],
        timeout=20,
        what="the triggered execution",
    )
    assert len(started) == 1 and started[0]["execution_id"].startswith(schedule_id)

    from_file = tmp_path / "schedule.json"
    from_file.write_text(
        json.dumps(
            {
                "workflow_identifier": "sequential-sum",
                "schedule": {"input": {"values": [1]}, "intervals": [{"every": "1h"}]},
            }
        )
    )
    second = chainline(stack, "schedules", "create", "--file", str(from_file), "--json")
    second_id = json.loads(second.stdout)["schedule_id"]
    assert "every PT1H" in chainline(stack, "schedules", "show", second_id).stdout

    invalid = chainline(stack, "schedules", "create", "sequential-sum", "--cron", "nope")
    assert invalid.returncode == 1
    assert invalid.stderr.startswith("Error: HTTP 422: body.schedule: Value error")
    for schedule in (schedule_id, second_id):
        deleted = chainline(stack, "schedules", "delete", schedule)
        assert deleted.stdout.strip() == f"deleted {schedule}"
    missing = chainline(stack, "schedules", "show", schedule_id)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: HTTP 404 WF_1100: Schedule '{schedule_id}' not found"


def test_runs_reset_and_reading_a_run_by_its_id_from_the_cli(stack: Stack) -> None:
    chosen = execution_id()
    ran = chainline(
        stack, "run", "sequential-sum", "--input", '{"values": [2, 5]}', "--id", chosen, "--wait"
    )
    assert ran.returncode == 0, ran.stderr
    first = json.loads(chainline(stack, "get", chosen, "--json").stdout)
    events = json.loads(chainline(stack, "history", chosen, "--json").stdout)["events"]
    point = next(e["event_id"] for e in events if e["event_type"] == "WORKFLOW_TASK_COMPLETED")

    reset = chainline(stack, "reset", chosen, "--event", point, "--reason", "from the cli")
    assert reset.returncode == 0, reset.stderr
    assert reset.stdout.startswith(f"reset {chosen}: new run ")
    refused = chainline(stack, "reset", chosen, "--event", "1")
    assert refused.returncode == 1
    assert "WF_1001" in refused.stderr and "reset point" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    def completed_again() -> dict[str, object] | None:
        now = json.loads(chainline(stack, "get", chosen, "--json").stdout)
        return now if now["run_id"] != first["run_id"] and now["status"] == "COMPLETED" else None

    second = wait_until(completed_again, what="the new run to complete")
    # The old run, by its id: as it was, and its history.
    old = json.loads(chainline(stack, "get", str(first["run_id"]), "--json").stdout)
    assert old["run_id"] == first["run_id"] and old["status"] == "COMPLETED"
    old_history = chainline(stack, "history", str(first["run_id"])).stdout.splitlines()
    assert "WORKFLOW_EXECUTION_STARTED" in old_history[0]
    assert "WORKFLOW_EXECUTION_RESET" not in "\n".join(old_history)
    new_history = chainline(stack, "history", chosen).stdout
    assert "WORKFLOW_EXECUTION_RESET" in new_history

    listed = chainline(stack, "runs", "--search", chosen)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all(chosen in line for line in lines)
    assert str(second["run_id"]) in lines[0] and str(first["run_id"]) in lines[1]
    as_json = json.loads(chainline(stack, "runs", "--search", chosen, "--json").stdout)
    assert [r["run_id"] for r in as_json["executions"]] == [second["run_id"], first["run_id"]]
    only_failed = chainline(stack, "runs", "--search", chosen, "--status", "FAILED")
    assert only_failed.stdout.strip() == "(no runs)"
    missing = chainline(stack, "get", "00000000-0000-4000-8000-000000000000")
    assert missing.returncode == 1 and "no execution or run" in missing.stderr


def test_watch_follows_an_execution_live_to_its_result(stack: Stack) -> None:
    chosen = execution_id()
    started = chainline(
        stack, "run", "reporting-progress", "--input", '{"rows": 2}', "--id", chosen
    )
    assert started.returncode == 0, started.stderr
    watched = chainline(stack, "watch", chosen)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0] == f"reporting-progress {chosen}: RUNNING" or lines[0].endswith("COMPLETED")
    shown = "\n".join(lines)
    assert "activity export_rows (attempt 1)" in shown and "completed" in shown
    assert "task export" in shown and "in progress done=1" in shown
    assert "in progress done=2" in shown
    assert "task doomed" in shown and "failed" in shown
    assert "status     COMPLETED" in shown and "result     2" in shown
    as_json = chainline(stack, "watch", chosen, "--json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert events[0]["event_type"] == "WORKFLOW_EXECUTION_STARTED"
    assert events[-1]["event_type"] == "WORKFLOW_EXECUTION_COMPLETED"
    failing = chainline(stack, "run", "raises", "--input", '{"reason": "no"}', "--wait")
    failed_id = re.search(r"started (\S+)", failing.stderr)
    assert failed_id is not None
    assert chainline(stack, "watch", failed_id.group(1)).returncode == 1
