"""The raw-Celery baseline `chainline bench` compares against: a plain no-op task."""

from __future__ import annotations

from workers.celery_app import app

RAW_NOOP_TASK = "bench.raw_noop"


@app.task(name=RAW_NOOP_TASK)
def raw_noop(step: int) -> int:
    return step
