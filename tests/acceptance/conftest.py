"""The real processes from the Procfile, against a fresh database and a private broker prefix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from app.devstack import free_port, procfile_commands
from app.settings import Settings
from tests.support import (
    BROKER_URL,
    create_database,
    delete_broker_keys,
    drop_database,
    wait_until,
)
from workers.celery_app import create_celery_app

REPO = Path(__file__).resolve().parents[2]
MAX_PAYLOAD_BYTES = 100_000


def procfile() -> dict[str, str]:
    return procfile_commands(REPO / "Procfile")


@dataclass
class Stack:
    base_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                ["bash", "-c", "exec " + procfile()[name]],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def celery_client(self) -> Celery:
        return create_celery_app(
            Settings(
                broker_url=self.env["CHAINLINE_BROKER_URL"],
                broker_key_prefix=self.env["CHAINLINE_BROKER_KEY_PREFIX"],
                queue=self.env["CHAINLINE_QUEUE"],
            )
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database_url = create_database()
    port = free_port()
    tag = uuid.uuid4().hex[:10]
    logs = tmp_path_factory.mktemp("logs")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PORT": str(port),
        "CHAINLINE_DATABASE_URL": database_url,
        "CHAINLINE_BROKER_URL": BROKER_URL,
        "CHAINLINE_BROKER_KEY_PREFIX": f"chainline-test-{tag}:",
        "CHAINLINE_QUEUE": f"chainline-test-{tag}",
        "CHAINLINE_WORKFLOWS": "tests.workflows",
        "CHAINLINE_SWEEP_INTERVAL_SECONDS": "0.5",
        "CHAINLINE_STALLED_AFTER_SECONDS": "5",
        "CHAINLINE_WORKER_CONCURRENCY": "3",
        "CHAINLINE_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
        "CHAINLINE_BEAT_SCHEDULE_FILE": str(logs / "beat-schedule"),
    }
    running = Stack(base_url=f"http://127.0.0.1:{port}", env=env, logs=logs)
    try:
        release = subprocess.run(
            ["bash", "-c", procfile()["release"]],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert release.returncode == 0, release.stderr.decode()
        for name in ("api", "worker", "beat"):
            running.start(name)
        wait_until(lambda: _api_up(running.base_url), timeout=30, what="the API")
        # One execution through the whole stack proves the worker consumes the queue.
        with httpx.Client(base_url=running.base_url, timeout=30) as client:
            reply = client.post(
                "/v1/workflows/sequential-sum/execute",
                json={"input": {"values": [1]}, "wait_for_result": True, "timeout_seconds": 60},
            )
        assert reply.json().get("result") == {"total": 1}, reply.text
        yield running
    finally:
        running.stop()
        for name in running.processes:
            sys.stdout.write(f"\n--- {name} log: {logs / (name + '.log')}\n")
        drop_database(database_url)
        delete_broker_keys(env["CHAINLINE_BROKER_KEY_PREFIX"])


def _api_up(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/v1/workflows", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def execution_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def wait_for_end(http: httpx.Client, execution_id: str, timeout: float = 30) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        record: dict[str, Any] = http.get(f"/v1/workflows/executions/{execution_id}").json()
        return record if record["end_time"] is not None else None

    return wait_until(ended, timeout=timeout, what=f"execution {execution_id} to end")


def history(http: httpx.Client, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = http.get(
        f"/v1/workflows/executions/{execution_id}/history"
    ).json()["events"]
    return events
