"""`chainline bench`'s figures for the runs API at size: many runs (a million by default)
written straight into Postgres, spread over workflows, statuses, trees, search keys and a
month of start times, then pages of `GET /v1/workflows/runs` asked with each filter the
SDK sends, timed from the client (HTTP included). Target: a filtered page in < 20 ms.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from app.devtools.measuring import percentile

WORKFLOWS = 20
# One run in this many is FAILED (a rare status, so its filter cannot ride on luck).
FAILED_EVERY = 97
# Runs per tree: a root and its children.
TREE_SIZE = 10


@dataclass(frozen=True)
class RunListingBenchConfig:
    runs: int = 1_000_000
    # Pages asked per filter.
    samples: int = 50
    page_size: int = 50
    timeout: float = 600.0


def measure_run_listing(
    api_url: str, database_url: str, config: RunListingBenchConfig
) -> dict[str, Any]:
    """Write the runs, then time pages of each filter; the runs stay (a scratch
    database)."""
    prefix = f"bench-runs-{uuid.uuid4().hex[:6]}-"
    with psycopg.connect(database_url, autocommit=True) as pg:
        started = time.monotonic()
        _write_runs(pg, prefix, config.runs)
        written_seconds = time.monotonic() - started
        total = pg.execute("SELECT count(*) FROM runs").fetchone()
    assert total is not None
    root = f"{prefix}{(config.runs // 2) // TREE_SIZE * TREE_SIZE}"
    filters: dict[str, dict[str, Any]] = {
        "newest": {},
        "workflow": {"workflow_identifier": f"{prefix}wf-7"},
        "rare_status": {"status": "FAILED"},
        "workflow_and_statuses": {
            "workflow_identifier": f"{prefix}wf-3",
            "status": ["FAILED", "CANCELED"],
        },
        "root_tree": {"root_execution_id": root},
        "time_range": {
            "start_time_after": "2026-01-10T00:00:00Z",
            "start_time_before": "2026-01-11T00:00:00Z",
        },
        "by_end_time_oldest_first": {"sort_by": "end_time", "order": "asc"},
        "search_key_exact": {"search_key": "tier==:gold"},
        "search_prefix": {"search": f"{prefix}12345"},
    }
    report: dict[str, Any] = {
        "runs": int(total[0]),
        "write_seconds": round(written_seconds, 1),
        "page_size": config.page_size,
    }
    with httpx.Client(base_url=api_url, timeout=config.timeout) as api:
        for name, params in filters.items():
            report[name] = _time_pages(api, params, config)
        report["second_page"] = _time_second_pages(api, f"{prefix}wf-7", config)
    report["worst_p99_ms"] = max(
        v["p99_ms"] for v in report.values() if isinstance(v, dict) and "p99_ms" in v
    )
    return report


def _write_runs(pg: psycopg.Connection[Any], prefix: str, count: int) -> None:
    """`count` closed executions of one run each, in trees of TREE_SIZE, with start
    times over January 2026, one in FAILED_EVERY failed, some with search keys."""
    pg.execute(
        """
        WITH numbered AS (
            SELECT g, %(prefix)s || g AS execution_id, gen_random_uuid() AS run_id,
                   %(prefix)s || (g / %(tree)s * %(tree)s) AS root_id,
                   %(prefix)s || 'wf-' || (g %% %(workflows)s) AS workflow_name,
                   timestamptz '2026-01-01' + g * interval '2.592 seconds'
                       * (1000000.0 / %(count)s) AS started,
                   CASE WHEN g %% %(failed_every)s = 0 THEN 'FAILED' ELSE 'COMPLETED' END
                       AS status
            FROM generate_series(0, %(count)s - 1) AS g
        ), execution AS (
            INSERT INTO executions (execution_id, workflow_name, root_execution_id,
                                    parent_execution_id, current_run_id,
                                    first_execution_run_id, search_keys, created_at)
            SELECT execution_id, workflow_name, root_id,
                   CASE WHEN execution_id <> root_id THEN root_id END, run_id, run_id,
                   CASE g %% 5 WHEN 0 THEN '{"tier": "gold"}'::jsonb
                               WHEN 1 THEN '{"tier": "silver"}'::jsonb END,
                   started
            FROM numbered
        )
        INSERT INTO runs (run_id, execution_id, run_number, workflow_name, root_execution_id,
                          status, start_time, end_time, deadline, random_seed, last_event_id)
        SELECT run_id, execution_id, 1, workflow_name, root_id, status, started,
               started + interval '1 second', started + interval '1 hour', 1, 1
        FROM numbered
        """,
        {
            "prefix": prefix,
            "count": count,
            "tree": TREE_SIZE,
            "workflows": WORKFLOWS,
            "failed_every": FAILED_EVERY,
        },
    )
    pg.execute("ANALYZE executions")
    pg.execute("ANALYZE runs")


def _time_pages(
    api: httpx.Client, params: dict[str, Any], config: RunListingBenchConfig
) -> dict[str, float]:
    query = {**params, "page_size": config.page_size}
    api.get("/v1/workflows/runs", params=query).raise_for_status()  # warm
    took = []
    found = 0
    for _ in range(config.samples):
        began = time.perf_counter()
        reply = api.get("/v1/workflows/runs", params=query)
        took.append((time.perf_counter() - began) * 1000)
        reply.raise_for_status()
        found = len(reply.json()["executions"])
    return _summary(took, found)


def _time_second_pages(
    api: httpx.Client, workflow: str, config: RunListingBenchConfig
) -> dict[str, float]:
    """A workflow's second page, after the first one's cursor, as the SDK's .next()
    asks for it."""
    query: dict[str, Any] = {"page_size": config.page_size, "workflow_identifier": workflow}
    first = api.get("/v1/workflows/runs", params=query).json()
    token = first["next_page_token"]
    if token is None:
        return _summary([0.0], 0)
    took = []
    found = 0
    for _ in range(config.samples):
        began = time.perf_counter()
        reply = api.get("/v1/workflows/runs", params={**query, "next_page_token": token})
        took.append((time.perf_counter() - began) * 1000)
        reply.raise_for_status()
        found = len(reply.json()["executions"])
    return _summary(took, found)


def _summary(took: list[float], found: int) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(took, 0.5), 2),
        "p99_ms": round(percentile(took, 0.99), 2),
        "runs_on_page": found,
    }
