"""Helpers shared by the integration and acceptance tests."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import psycopg
from sqlalchemy import Engine, make_url, text

from app.devtools.bench import delete_keys
from app.processes import scripts_dir
from app.settings import normalize_database_url
from app.storage.db import make_engine

T = TypeVar("T")

# As the README runs it: by its path in the virtualenv, which need not be activated.
CHAINLINE = str(Path(scripts_dir()) / "chainline")

ADMIN_DATABASE_URL = os.environ.get(
    "CHAINLINE_TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("CHAINLINE_TEST_BROKER_URL", "redis://127.0.0.1:6379/0")


def newcomer_env() -> dict[str, str]:
    """This environment as a newcomer's shell has it: no Chainline settings, and no
    virtualenv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINLINE_")}
    path = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p and Path(p) != Path(scripts_dir()))
    return env


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def engine_named(database_url: str, application_name: str) -> Engine:
    """An engine of its own whose connections `terminate_backends` can find."""
    url = make_url(normalize_database_url(database_url))
    return make_engine(
        url.update_query_dict({"application_name": application_name}).render_as_string(
            hide_password=False
        )
    )


def terminate_backends(application_name: str) -> None:
    """What a Postgres restart does to the connections of one client."""
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )


def create_database() -> str:
    """Create an empty database for this test run; return its URL."""
    name = f"chainline_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_DATABASE_URL.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_broker_keys(prefix: str, broker_url: str = BROKER_URL) -> None:
    """Tidy what a test left in a Redis (the shared one by default) under its key prefix."""
    delete_keys(broker_url, prefix)


def schedule_fires(engine: Engine, schedule_id: str) -> list[tuple[datetime, str, str, str | None]]:
    """A schedule's fire records, by tick: (tick, kind, outcome, execution id)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tick, kind, outcome, execution_id FROM schedule_fires"
                " WHERE schedule_id = :s ORDER BY tick"
            ),
            {"s": schedule_id},
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]
