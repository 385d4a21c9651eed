"""Raw Celery tasks `chainline bench` compares Chainline against, registered on the bench's
worker (`--include`): a plain no-op, and the durable limit, a no-op that makes the two
Postgres transactions an honest claim and outcome need (an UPDATE and an INSERT each)."""

from __future__ import annotations

from functools import lru_cache

import psycopg

from app.settings import get_settings, libpq_url
from workers.celery_app import app

RAW_NOOP_TASK = "bench.raw_noop"
DURABLE_STEP_TASK = "bench.durable_step"

CREATE_DURABLE_TABLES = """
CREATE TABLE IF NOT EXISTS bench_steps (
    chain_id text NOT NULL,
    step int NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (chain_id, step)
);
CREATE TABLE IF NOT EXISTS bench_step_events (
    id bigserial PRIMARY KEY,
    chain_id text NOT NULL,
    step int NOT NULL,
    kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


@app.task(name=RAW_NOOP_TASK)
def raw_noop(step: int) -> int:
    return step


@lru_cache(maxsize=1)
def _connection() -> psycopg.Connection[tuple[object, ...]]:
    # One per pool process, opened there (after the fork).
    return psycopg.connect(libpq_url(get_settings().database_url))


@app.task(name=DURABLE_STEP_TASK)
def durable_step(chain_id: str, step: int) -> int:
    """A claim, then an outcome: each a transaction with an UPDATE and an INSERT, sent as
    Chainline sends its own (psycopg's pipeline: one round trip to commit)."""
    conn = _connection()
    for state in ("started", "done"):
        with conn.pipeline(), conn.transaction():
            conn.execute(
                "UPDATE bench_steps SET state = %s WHERE chain_id = %s AND step = %s",
                (state, chain_id, step),
            )
            conn.execute(
                "INSERT INTO bench_step_events (chain_id, step, kind) VALUES (%s, %s, %s)",
                (chain_id, step, state),
            )
    return step
