"""The Celery application: broker settings, the reliability rules, and the beat schedule.

Start a worker with `celery -A workers.celery_app worker` and beat with
`celery -A workers.celery_app beat` (see the Procfile).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from app.settings import REDIS_BROKER_SCHEMES, Settings, get_settings
from app.storage.db import get_engine
from app.workflows.registry import load_workflow_modules
from workers.broker import PUBLISHING_REDIS_BACKEND, broker_transport

SWEEP_TASK = "chainline.sweep"
WORKFLOW_TASK = "chainline.workflow_task"


def activity_task_name(activity_name: str) -> str:
    """The Celery task name of an activity: what Flower shows for each attempt."""
    return f"activity.{activity_name}"


def _transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        # Longer than any activity's time limit plus the longest retry countdown we
        # hand to Celery, so Redis never redelivers a message that is still being run.
        "visibility_timeout": 4 * 3600,
    }
    if settings.broker_key_prefix and settings.broker_url.startswith(("redis", "unix")):
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def create_celery_app(settings: Settings, *, publish_only: bool = False) -> Celery:
    """The Celery app of these settings. `publish_only`: for an app that sends work and
    never waits on a result (the dispatcher's), whose Redis result backend therefore
    subscribes to none (PublishingRedisBackend)."""
    backend = settings.celery_result_backend
    if publish_only and backend.startswith(REDIS_BROKER_SCHEMES):
        backend = f"{PUBLISHING_REDIS_BACKEND}+{backend}"
    # A second app in a process must not become Celery's current app, which the
    # worker's own app (the one with the tasks) is.
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
        # Flower builds its task list from these events.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_consumer="workers.broker:EventBatchingConsumer",
        chainline_event_flush_seconds=settings.event_flush_seconds,
        worker_concurrency=settings.worker_concurrency,
        beat_schedule_filename=settings.beat_schedule_file,
        beat_schedule={
            "chainline-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_seconds,
                # A sweep that waited a whole interval in the queue is superseded.
                "options": {"expires": max(settings.sweep_interval_seconds, 1.0)},
            }
        },
    )
    transport = broker_transport(settings.broker_url)
    if transport is not None:
        app.conf.broker_transport = transport
    return app


settings = get_settings()
app = create_celery_app(settings)
registry = load_workflow_modules(settings.workflow_modules)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's database sockets.
    get_engine().dispose(close=False)


import workers.bench_tasks  # noqa: E402  (registers the tasks on `app`)
import workers.tasks  # noqa: E402,F401
