"""The Celery app's settings: the broker, the reliability rules, and the task names.

Messages carry ids only (a run and an activity number); Postgres holds everything
else, and decides whether a message still has work to do, so any message may be lost
(the sweeper sends it again) or delivered twice (the second finds its work done).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from app.messaging.transports import PUBLISHING_REDIS_BACKEND, broker_transport
from app.settings import REDIS_BROKER_SCHEMES, Settings

WORKFLOW_TASK = "chainline.workflow_task"
# How long past its own limit a task may run before Celery kills its process: for the
# writes around the user's code (claim, outcome, inline workflow task), which give up
# at their own deadlines well before.
TIME_LIMIT_MARGIN_SECONDS = 60.0
# Each message's send time (the publisher's clock), for the oldest message's age in
# /metrics (app/messaging/queues.py).
SENT_AT_HEADER = "chainline_sent_at"


@before_task_publish.connect(weak=False)
def _stamp_sent_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[SENT_AT_HEADER] = time.time()


def activity_task_name(activity_name: str) -> str:
    """The Celery task name of an activity: what Flower shows for each attempt."""
    return f"activity.{activity_name}"


def _queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)


def _transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        # Longer than any activity's time limit plus the longest retry countdown handed
        # to Celery, so that Redis does not deliver a message again while it runs.
        "visibility_timeout": 4 * 3600,
    }
    if settings.broker_key_prefix and settings.broker_url.startswith(REDIS_BROKER_SCHEMES):
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def create_celery_app(settings: Settings, *, publish_only: bool = False) -> Celery:
    """The Celery app of these settings. `publish_only`: for an app that sends work and
    never waits on a result (the dispatcher's), whose Redis result backend therefore
    subscribes to none (transports.PublishingRedisBackend), and which must not become
    Celery's current app (a worker's own app, with the tasks, is)."""
    backend = settings.celery_result_backend
    if publish_only and backend.startswith(REDIS_BROKER_SCHEMES):
        backend = f"{PUBLISHING_REDIS_BACKEND}+{backend}"
    app = Celery(
        "chainline",
        broker=settings.broker_url,
        backend=backend,
        set_as_current=not publish_only,
    )
    result_options: dict[str, Any] = {}
    if settings.broker_key_prefix and settings.celery_result_backend.startswith("redis"):
        result_options["global_keyprefix"] = settings.broker_key_prefix
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings),
        result_backend_transport_options=result_options,
        result_expires=3600,
        task_default_queue=settings.queue,
        # Workflow tasks have a queue of their own, which every worker consumes besides
        # the activities', and the workflow lane alone (`chainline worker`).
        task_queues=[_queue(settings.queue), _queue(settings.workflow_task_queue)],
        task_routes={WORKFLOW_TASK: {"queue": settings.workflow_task_queue}},
        # Flower builds its task list from these events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    transport = broker_transport(settings.broker_url)
    if transport is not None:
        # By name, not the class: the worker reports its settings as JSON (`inspect
        # stats`, which Flower shows), and a class is not JSON.
        app.conf.broker_transport = f"{transport.__module__}:{transport.__qualname__}"
    return app
