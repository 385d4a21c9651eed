"""Process configuration, read from CHAINLINE_* environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Let a plain postgresql:// URL select the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """A database URL as psycopg (libpq) takes it: without SQLAlchemy's driver name."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# URLs that kombu's Redis transport serves as a broker.
REDIS_BROKER_SCHEMES = ("redis://", "rediss://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAINLINE_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/chainline"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Only Celery's chord bookkeeping uses it; results themselves live in Postgres.
    result_backend: str | None = None
    # Prefix for every broker key, so several deployments can share one Redis.
    broker_key_prefix: str = ""
    queue: str = "chainline"
    # `chainline worker` also runs a one-process worker for workflow tasks alone, so that
    # signals, cancels and timers are handled while every pool process runs an activity.
    workflow_lane: bool = True
    workflows: str = ""
    api_keys: str = ""
    max_payload_bytes: int = 2 * 1024 * 1024
    # How often beat sweeps (times out runs and attempts past their deadlines, sends lost
    # work again): a deadline is enforced within about this long of falling due.
    sweep_interval_seconds: float = 1.0
    # How often beat looks for due timers: a timer fires within about this long of its
    # due time (an indexed query that finds nothing costs well under a millisecond).
    timer_poll_seconds: float = 0.1
    # How often beat looks for due schedules: a tick fires within about this long of its
    # time, and a schedule created, paused or deleted counts from the next look.
    schedule_poll_seconds: float = 0.2
    # How long an update's caller waits for the workflow to handle it.
    update_wait_seconds: float = 60.0
    # How long work may wait for its message before the sweeper sends it again.
    stalled_after_seconds: float = 30.0
    # How long workflow code may run in one workflow task (Temporal's default).
    workflow_task_timeout_seconds: float = 10.0
    # A run's history cap, as Mistral's (Temporal's): a workflow task that finds it
    # reached ends the run FAILED. should_continue_as_new() turns true well before, at
    # Temporal's suggestion thresholds.
    history_event_limit: int = 51_200
    history_byte_limit: int = 50 * 1024 * 1024
    history_suggest_events: int = 4_096
    history_suggest_bytes: int = 4 * 1024 * 1024
    beat_schedule_file: str = "/tmp/chainline-beat-schedule"
    # The longest a worker holds a task event (for Flower) to publish it with others.
    event_flush_seconds: float = 0.1
    # Worker pool size; unset means Celery's default (one process per core).
    worker_concurrency: int | None = None
    api_host: str = "127.0.0.1"
    # Requests that may wait for results (wait_for_result) at once, per API process; more
    # are refused with 503 before they start anything.
    max_waiting_requests: int = 500
    # "user:password" (comma-separated for several); Flower refuses to start without it.
    flower_basic_auth: str = ""
    flower_port: int = 5555
    flower_address: str = "127.0.0.1"

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str) -> str:
        return normalize_database_url(url)

    @property
    def workflow_task_queue(self) -> str:
        """Where workflow tasks go: every worker takes them, and so does the lane."""
        return f"{self.queue}.workflow-tasks"

    @property
    def workflow_modules(self) -> list[str]:
        return [m.strip() for m in self.workflows.split(",") if m.strip()]

    @property
    def accepted_api_keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url.startswith(REDIS_BROKER_SCHEMES):
            return self.broker_url
        return "db+" + self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
