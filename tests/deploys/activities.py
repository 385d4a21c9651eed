"""The activities every version of `deploy-check` calls."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from app import workflows


@workflows.activity(start_to_close_timeout=timedelta(seconds=10))
def tag(label: str) -> str:
    return label


class NotReleased(Exception):
    """The test has not released the workflow yet."""


@workflows.activity(
    start_to_close_timeout=timedelta(seconds=10),
    retry_policy_max_attempts=1000,
    retry_policy_backoff_coefficient=1.0,
    retry_policy_initial_interval=timedelta(milliseconds=200),
)
def hold(folder: str) -> str:
    """Fails, and is retried, until the test releases it: the run waits on it without
    keeping a worker busy, so that a deploy (a worker restart) can happen meanwhile."""
    (Path(folder) / "started").write_text("started")
    if not (Path(folder) / "release").exists():
        raise NotReleased(folder)
    return "released"
