"""The worker's task events (what Flower shows), read off the broker as published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from celery.events.event import get_exchange
from kombu import Queue

from app.messaging.broker import WORKFLOW_TASK, create_celery_app
from app.settings import Settings
from tests.acceptance.conftest import Stack, execution_id, wait_for_end
from tests.support import CHAINLINE, delete_broker_keys, wait_until


@dataclass
class EventLog:
    """Every event message published while it listened: one list per publish.

    The listening thread appends (atomic for a list); readers take a copy."""

    publishes: list[list[dict[str, Any]]] = field(default_factory=list)

    def task_events(self) -> list[dict[str, Any]]:
        return [e for b in list(self.publishes) for e in b if e["type"].startswith("task-")]

    def worker_publishes(self) -> list[list[dict[str, Any]]]:
        """The publishes of workers' task events (publishers send task-sent)."""
        return [b for b in list(self.publishes) if any(e["type"] in WORKER_EVENTS for e in b)]


WORKER_EVENTS = ("task-received", "task-started", "task-succeeded")


@contextmanager
def listening(app: Celery) -> Iterator[EventLog]:
    """Subscribe to the event exchange, as Flower does, and keep each message whole."""
    log = EventLog()
    stop = threading.Event()
    subscribed = threading.Event()

    def receive(body: Any, message: Any) -> None:
        log.publishes.append(body if isinstance(body, list) else [body])

    def consume() -> None:
        with app.connection_for_read() as connection:
            events = Queue(
                f"test-events-{uuid.uuid4().hex[:8]}",
                # Celery's exchange for this broker (a fanout one on Redis).
                get_exchange(connection),
                routing_key="#",
                auto_delete=True,
                durable=False,
            )
            with connection.Consumer([events], callbacks=[receive], accept=["json"], no_ack=True):
                subscribed.set()
                while not stop.is_set():
                    try:
                        connection.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert subscribed.wait(10), "could not subscribe to the event exchange"
    try:
        yield log
    finally:
        stop.set()
        thread.join(10)


def test_an_execution_s_task_events_reach_monitors_without_more_traffic(
    stack: Stack, http: httpx.Client
) -> None:
    # Batched events go out on a timer too: the last ones do not wait for more tasks.
    with listening(stack.celery_client()) as log:
        started = http.post(
            "/v1/workflows/sequential-sum/execute",
            json={"execution_id": execution_id(), "input": {"values": [1, 2, 3]}},
        ).json()
        assert wait_for_end(http, started["execution_id"])["status"] == "COMPLETED"
        run_id = started["run_id"]

        def activity_events() -> dict[str, list[str]] | None:
            names = {
                e["uuid"]: e["name"]
                for e in log.task_events()
                if e["type"] == "task-received"
                and run_id in e.get("args", "")
                and e["name"].startswith("activity.")
            }
            by_task: dict[str, list[str]] = {task_id: [] for task_id in names}
            for event in log.task_events():
                if event["uuid"] in by_task:
                    by_task[event["uuid"]].append(event["type"])
            done = [t for t in by_task.values() if "task-succeeded" in t]
            return by_task if len(done) == 3 else None

        by_task = wait_until(activity_events, timeout=20, what="the activities' task events")
    for types in by_task.values():
        # Sent by the publisher with the message; the rest by the worker, batched.
        assert types == ["task-sent", "task-received", "task-started", "task-succeeded"]


def test_a_worker_publishes_task_events_in_batches_and_the_rest_on_shutdown(
    stack: Stack, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        broker_url=stack.env["CHAINLINE_BROKER_URL"],
        broker_key_prefix=f"chainline-test-events-{tag}:",
        queue=f"chainline-test-events-{tag}",
    )
    env = {
        **stack.env,
        "CHAINLINE_BROKER_KEY_PREFIX": settings.broker_key_prefix,
        "CHAINLINE_QUEUE": settings.queue,
        # Long enough that only the buffer limit and the shutdown publish events.
        "CHAINLINE_EVENT_FLUSH_SECONDS": "600",
        # One worker's buffer is counted: no lane to take half of the workflow tasks.
        "CHAINLINE_WORKFLOW_LANE": "false",
    }
    client = create_celery_app(settings)
    tasks = 10  # received, started and succeeded: 30 events, over one buffer of 24
    try:
        with listening(client) as log, (tmp_path / "worker.log").open("wb") as worker_log:
            worker = subprocess.Popen(
                [CHAINLINE, "worker", "--concurrency=1", "--loglevel=INFO"],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                wait_until(lambda: client.control.ping(timeout=0.5), timeout=60, what="the worker")
                for _ in range(tasks):
                    # A workflow task for a run that does not exist: done at once.
                    client.send_task(WORKFLOW_TASK, args=[str(uuid.uuid4())], ignore_result=True)
                wait_until(
                    lambda: (tmp_path / "worker.log").read_text().count("succeeded in") == tasks,
                    timeout=30,
                    what="the tasks to run",
                )
                first = wait_until(log.worker_publishes, timeout=10, what="the first batch")
                assert [len(batch) for batch in first] == [24]
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(timeout=30)
            wait_until(
                lambda: sum(map(len, log.worker_publishes())) == 3 * tasks,
                timeout=10,
                what="the rest",
            )
    finally:
        delete_broker_keys(settings.broker_key_prefix)
    batches = log.worker_publishes()
    assert [len(batch) for batch in batches] == [24, 6]
    for event_type in WORKER_EVENTS:
        assert len({e["uuid"] for b in batches for e in b if e["type"] == event_type}) == tasks


def test_each_attempt_is_a_task_of_its_own_and_a_failed_attempt_a_failed_task(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    secret = f"api_token-{uuid.uuid4().hex}"
    folder = tmp_path / secret
    folder.mkdir()
    with listening(stack.celery_client()) as log:
        started = http.post(
            "/v1/workflows/flaky/execute",
            json={"execution_id": execution_id(), "input": {"folder": str(folder), "failures": 2}},
        ).json()
        assert wait_for_end(http, started["execution_id"])["status"] == "COMPLETED"
        run_id = started["run_id"]

        def attempts() -> dict[str, list[str]] | None:
            tasks = {
                e["uuid"]
                for e in log.task_events()
                if e["type"] == "task-received"
                and e["name"] == "activity.flaky"
                and run_id in e.get("args", "")
            }
            by_task: dict[str, list[str]] = {task_id: [] for task_id in tasks}
            for event in log.task_events():
                if event["uuid"] in by_task:
                    by_task[event["uuid"]].append(event["type"])
            ended = [t for t in by_task.values() if {"task-failed", "task-succeeded"} & set(t)]
            return by_task if len(ended) == 3 else None

        by_task = wait_until(attempts, timeout=20, what="three attempts' task events")
        everything = json.dumps(log.publishes)
    outcomes = sorted(
        "failed" if "task-failed" in types else "succeeded" for types in by_task.values()
    )
    assert outcomes == ["failed", "failed", "succeeded"]
    # Nothing of the activity's input reaches a message or an event, retries included.
    assert secret not in everything


def test_housekeeping_is_not_a_task_on_the_operator_s_list(stack: Stack) -> None:
    with listening(stack.celery_client()) as log:
        time.sleep(3)  # three sweeps at the default interval
        names = {e.get("name") for e in log.task_events()}
    assert not any(name and "sweep" in name for name in names)
