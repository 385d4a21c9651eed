"""The real processes from the Procfile, against a fresh database and a private broker prefix.

`stack` runs them with the settings a user gets by default (sweep interval, stalled-work
threshold, worker concurrency); `launch_stack` starts other stacks, on other servers or
with other settings, for the tests that need them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import create_engine, func, select

from app.devtools.devstack import free_port, procfile_commands
from app.messaging.broker import create_celery_app
from app.processes import with_scripts_on_path
from app.settings import Settings, normalize_database_url
from app.storage import schema
from tests.support import (
    BROKER_URL,
    create_database,
    delete_broker_keys,
    drop_database,
    wait_until,
)

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

    def start(self, name: str, command: str | None = None, **env: str) -> None:
        """Start a Procfile process (or `command` under its name), with `env` on top."""
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                ["bash", "-c", "exec " + (command or procfile()[name])],
                cwd=REPO,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_process(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def restart(self, name: str, **env: str) -> None:
        """Stop the process and start it again: a deploy, when `env` changes its code."""
        self.stop_process(name)
        self.start(name, **env)

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def row_counts(self) -> tuple[int, int]:
        """How many executions and events Postgres holds: a refused request adds none."""
        engine = create_engine(normalize_database_url(self.env["CHAINLINE_DATABASE_URL"]))
        try:
            with engine.connect() as conn:
                return (
                    int(
                        conn.execute(
                            select(func.count()).select_from(schema.executions)
                        ).scalar_one()
                    ),
                    int(conn.execute(select(func.count()).select_from(schema.events)).scalar_one()),
                )
        finally:
            engine.dispose()

    def celery_client(self) -> Celery:
        return create_celery_app(
            Settings(
                broker_url=self.env["CHAINLINE_BROKER_URL"],
                broker_key_prefix=self.env["CHAINLINE_BROKER_KEY_PREFIX"],
                queue=self.env["CHAINLINE_QUEUE"],
            )
        )

    def wait_for_worker(self) -> None:
        """Until a worker answers a ping (it consumes the queue from then on)."""
        client = self.celery_client()
        try:
            wait_until(lambda: client.control.ping(timeout=0.5), timeout=60, what="a worker")
        finally:
            client.close()


@contextmanager
def launch_stack(
    database_url: str,
    broker_url: str,
    logs: Path,
    settings: Mapping[str, str] = {},
    headers: Mapping[str, str] = {},
    probe: tuple[str, Any, Any] = ("sequential-sum", {"values": [1]}, {"total": 1}),
) -> Iterator[Stack]:
    """Migrate, start api, worker and beat, and check that an execution goes through."""
    tag = uuid.uuid4().hex[:10]
    port = free_port()
    # The Procfile says `chainline ...`: the one installed beside this Python, found even
    # when the tests run as `.venv/bin/python -m pytest` with no virtualenv activated.
    env = with_scripts_on_path(
        {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PORT": str(port),
            "CHAINLINE_DATABASE_URL": database_url,
            "CHAINLINE_BROKER_URL": broker_url,
            "CHAINLINE_BROKER_KEY_PREFIX": f"chainline-test-{tag}:",
            "CHAINLINE_QUEUE": f"chainline-test-{tag}",
            "CHAINLINE_WORKFLOWS": "tests.workflows",
            "CHAINLINE_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD_BYTES),
            "CHAINLINE_BEAT_SCHEDULE_FILE": str(logs / "beat-schedule"),
            **settings,
        }
    )
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
        workflow, input_value, result = probe
        with httpx.Client(base_url=running.base_url, headers=dict(headers), timeout=30) as client:
            reply = client.post(
                f"/v1/workflows/{workflow}/execute",
                json={"input": input_value, "wait_for_result": True, "timeout_seconds": 60},
            )
        assert reply.json().get("result") == result, reply.text
        yield running
    finally:
        running.stop()
        for name in ("api", "worker", "beat"):
            sys.stdout.write(f"\n--- {name} log: {logs / (name + '.log')}\n")
        delete_broker_keys(env["CHAINLINE_BROKER_KEY_PREFIX"], broker_url)


@contextmanager
def own_stack(
    logs: Path,
    settings: Mapping[str, str] = {},
    headers: Mapping[str, str] = {},
    probe: tuple[str, Any, Any] | None = None,
) -> Iterator[Stack]:
    """A stack of its own, on a fresh database (dropped afterwards) and the test broker."""
    database_url = create_database()
    try:
        extra = {} if probe is None else {"probe": probe}
        with launch_stack(database_url, BROKER_URL, logs, settings, headers, **extra) as running:
            yield running
    finally:
        drop_database(database_url)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The Procfile's processes with the timing settings users get by default."""
    with own_stack(tmp_path_factory.mktemp("logs")) as running:
        yield running


def _api_up(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        yield client


def execution_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def start(http: httpx.Client, workflow: str, input_value: Any, **extra: Any) -> dict[str, Any]:
    reply = http.post(
        f"/v1/workflows/{workflow}/execute",
        json={"execution_id": execution_id(), "input": input_value, **extra},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_for_end(http: httpx.Client, execution_id: str, timeout: float = 30) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        reply = http.get(f"/v1/workflows/executions/{execution_id}")
        if reply.status_code != 200:
            return None  # Postgres out of reach, for now (the fault tests make it so)
        record: dict[str, Any] = reply.json()
        return record if record["end_time"] is not None else None

    return wait_until(ended, timeout=timeout, what=f"execution {execution_id} to end")


def history(http: httpx.Client, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = http.get(
        f"/v1/workflows/executions/{execution_id}/history"
    ).json()["events"]
    return events


def types(events_json: list[dict[str, Any]]) -> list[str]:
    return [e["event_type"] for e in events_json]
