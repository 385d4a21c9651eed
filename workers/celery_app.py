"""The workers' Celery app: the shared settings (app/messaging/broker.py), the workflow
modules this deployment runs, and what only workers and beat need.

Start a worker with `celery -A workers.celery_app worker` and beat with
`celery -A workers.celery_app beat` (the Procfile does, through `chainline`). Importing
this module loads the workflow modules (CHAINLINE_WORKFLOWS); the tasks are imported
when a worker or beat starts (`include`).
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from app.messaging.broker import create_celery_app
from app.settings import get_settings
from app.storage.db import get_engine
from app.workflows.registry import load_workflow_modules

settings = get_settings()
registry = load_workflow_modules(settings.workflow_modules)
app = create_celery_app(settings)
app.conf.update(
    include=["workers.tasks"],
    worker_consumer="workers.consumer:EventBatchingConsumer",
    chainline_event_flush_seconds=settings.event_flush_seconds,
    worker_concurrency=settings.worker_concurrency,
    # Beat fires schedules and timers and runs the sweeper itself, from Postgres, so
    # that no deadline waits behind busy workers.
    beat_scheduler="workers.beat:ChainlineScheduler",
    beat_schedule_filename=settings.beat_schedule_file,
)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # A forked pool process must not share the parent's database sockets.
    get_engine().dispose(close=False)
