"""`chainline bench`'s figures for schedules: many schedules due every minute, all at the
same second, fired by the stack's one beat. Lateness is the started run's start time
minus its tick, both by Postgres's clock; beat's CPU is measured over a whole window
(a minute by default) that holds the tick, so that it counts the polls between ticks
as well as the firing.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg

from app.devtools.measuring import percentile, wait_for

EVERY_SECONDS = 60
# Time to create one schedule through the API, with CREATORS at once, budgeted generously
# so that all exist before their first tick.
CREATE_BUDGET_SECONDS = 0.004
CREATORS = 8
LEAD_SECONDS = 4.0


@dataclass(frozen=True)
class ScheduleBenchConfig:
    schedules: int = 1000
    # Beat's CPU is measured over this long, from just before the tick.
    window_seconds: float = 60.0
    timeout: float = 120.0


def measure_schedules(
    api_url: str,
    database_url: str,
    beat_cpu: Any,
    config: ScheduleBenchConfig,
) -> dict[str, Any]:
    """Create the schedules, let their tick come, and report lateness and beat's CPU;
    `beat_cpu()` is the beat process's CPU seconds so far. The schedules are deleted."""
    prefix = f"bench-sched-{uuid.uuid4().hex[:6]}-"
    with (
        psycopg.connect(database_url, autocommit=True) as pg,
        httpx.Client(base_url=api_url, timeout=config.timeout) as api,
    ):
        now = _db_now(pg)
        lead = LEAD_SECONDS + config.schedules * CREATE_BUDGET_SECONDS
        tick = (now + timedelta(seconds=lead)).replace(microsecond=0)
        offset = int(tick.timestamp()) % EVERY_SECONDS

        def create(index: int) -> None:
            reply = api.post(
                "/v1/workflows/schedules",
                json={
                    "workflow_identifier": "bench-one",
                    "schedule_id": f"{prefix}{index}",
                    "schedule": {
                        "input": None,
                        "intervals": [{"every": EVERY_SECONDS, "offset": offset}],
                        "policy": {"overlap": 6},
                    },
                },
            )
            reply.raise_for_status()

        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(create, range(config.schedules)))
        created = _db_now(pg)
        if created >= tick:
            raise RuntimeError(f"creating {config.schedules} schedules outlasted their tick")
        # The CPU window starts a second before the tick, or when all exist if later.
        wait_for(lambda: _db_now(pg) >= tick - timedelta(seconds=1), lead + 5, "the tick")
        cpu_before, window_start = beat_cpu(), time.monotonic()
        lateness = wait_for(
            lambda: _lateness(pg, prefix, config.schedules),
            config.timeout,
            f"{config.schedules} scheduled executions to start",
        )
        remaining = config.window_seconds - (time.monotonic() - window_start)
        time.sleep(max(0.0, remaining))
        cpu = beat_cpu() - cpu_before
        window = time.monotonic() - window_start
        fires = pg.execute(
            "SELECT count(*), count(DISTINCT (schedule_id, tick)) FROM schedule_fires"
            " WHERE starts_with(schedule_id, %s)",
            (prefix,),
        ).fetchone()
        pg.execute("DELETE FROM schedules WHERE starts_with(schedule_id, %s)", (prefix,))
    assert fires is not None
    return {
        "schedules": config.schedules,
        "ticks_fired": fires[0],
        "ticks_fired_twice": fires[0] - fires[1],
        "lateness": {
            "p50_ms": percentile(lateness, 0.50),
            "p99_ms": percentile(lateness, 0.99),
            "max_ms": max(lateness),
        },
        "beat_cpu_seconds": cpu,
        "window_seconds": window,
        "beat_cpu_percent_of_a_core": 100 * cpu / window,
    }


def _db_now(pg: psycopg.Connection[Any]) -> datetime:
    row = pg.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def _lateness(pg: psycopg.Connection[Any], prefix: str, expected: int) -> list[float]:
    """Each started execution's start minus its tick (ms), once all `expected` started
    (none before)."""
    rows = pg.execute(
        "SELECT extract(epoch FROM r.start_time - f.tick) * 1000"
        " FROM schedule_fires f JOIN runs r ON r.execution_id = f.execution_id"
        " WHERE starts_with(f.schedule_id, %s) AND f.outcome = 'STARTED'",
        (prefix,),
    ).fetchall()
    if len(rows) < expected:
        return []
    return [float(row[0]) for row in rows]
