"""`chainline bench`'s figures for talking to live executions: signal to the next
activity dispatched, query and update round trips, cancel and terminate to a closed
status (idle, and with every worker process busy), and the lateness of many timers
falling due at once. Each is measured against the running bench stack, through its API;
times that span processes are Postgres's own (event timestamps), never a host's.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from app.devtools.measuring import percentile, wait_for


@dataclass(frozen=True)
class InteractionConfig:
    samples: int = 30  # signals, queries, updates, cancels and terminates each
    sleepers: int = 1000  # executions whose timers fall due at once
    busy_processes: int = 2  # the worker's pool size: all kept busy for the busy figures
    timeout: float = 120.0


def percentiles(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 0.50),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "samples": len(samples),
    }


class Interactions:
    def __init__(self, api_url: str, database_url: str, config: InteractionConfig) -> None:
        self.api = httpx.Client(base_url=api_url, timeout=config.timeout)
        self.pg = psycopg.connect(database_url, autocommit=True)
        self.config = config

    def close(self) -> None:
        self.api.close()
        self.pg.close()

    def _start(self, workflow: str, input_value: Any = None) -> tuple[str, str]:
        execution_id = f"bench-{uuid.uuid4().hex}"
        reply = self.api.post(
            f"/v1/workflows/{workflow}/execute",
            json={"execution_id": execution_id, "input": input_value},
        )
        reply.raise_for_status()
        return execution_id, reply.json()["run_id"]

    def _count(self, run_id: str, event_type: str) -> int:
        row = self.pg.execute(
            "SELECT count(*) FROM events WHERE run_id = %s AND event_type = %s",
            (run_id, event_type),
        ).fetchone()
        return int(row[0]) if row else 0

    def _waiting(self, run_id: str) -> bool:
        """The run's workflow task has run on everything it was given: it waits."""
        row = self.pg.execute(
            "SELECT workflow_task_due_at IS NULL AND NOT EXISTS ("
            "  SELECT 1 FROM activities WHERE run_id = %s"
            "    AND state IN ('SCHEDULED', 'STARTED', 'BACKING_OFF'))"
            " FROM runs WHERE run_id = %s",
            (run_id, run_id),
        ).fetchone()
        return bool(row and row[0])

    def _post(self, path: str, body: Any = None) -> float:
        started = time.perf_counter()
        reply = self.api.post(path, json=body)
        elapsed = (time.perf_counter() - started) * 1000
        if reply.status_code >= 300:
            raise RuntimeError(f"POST {path}: {reply.status_code} {reply.text}")
        return elapsed

    def measure(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        report.update(self._signals_queries_updates())
        report["cancel_to_closed"] = percentiles(self._cancels(busy=False))
        report["terminate_to_closed"] = percentiles(self._terminates())
        report["cancel_to_closed_all_workers_busy"] = percentiles(self._cancels(busy=True))
        report["timers"] = self._timer_lateness()
        return report

    def _signals_queries_updates(self) -> dict[str, Any]:
        execution_id, run_id = self._start("bench-interactive")
        path = f"/v1/workflows/executions/{execution_id}"
        wait_for(lambda: self._waiting(run_id), self.config.timeout, "the first workflow task")
        dispatch_ms, signal_rtt_ms = [], []
        for done in range(self.config.samples):
            signal_rtt_ms.append(self._post(path + "/signals", {"name": "go"}))
            wait_for(
                lambda done=done: (  # type: ignore[misc]
                    self._count(run_id, "ACTIVITY_TASK_COMPLETED") > done and self._waiting(run_id)
                ),
                self.config.timeout,
                "the signalled activity",
            )
            row = self.pg.execute(
                "SELECT (SELECT max(event_timestamp) FROM events WHERE run_id = %(r)s"
                "          AND event_type = 'ACTIVITY_TASK_SCHEDULED')"
                "     - (SELECT max(event_timestamp) FROM events WHERE run_id = %(r)s"
                "          AND event_type = 'WORKFLOW_EXECUTION_SIGNALED')",
                {"r": run_id},
            ).fetchone()
            assert row is not None
            dispatch_ms.append(row[0] / 1e6)
        history_events = self._count_all(run_id)
        query_ms = [
            self._post(path + "/queries", {"name": "state"}) for _ in range(self.config.samples)
        ]
        update_ms = [
            self._post(path + "/updates", {"name": "bump", "input": {"by": 1}})
            for _ in range(self.config.samples)
        ]
        self._post(path + "/signals", {"name": "stop"})
        return {
            "signal_to_activity_scheduled": percentiles(dispatch_ms),
            "signal_request": percentiles(signal_rtt_ms),
            "query": {**percentiles(query_ms), "history_events": history_events},
            "update_round_trip": percentiles(update_ms),
        }

    def _count_all(self, run_id: str) -> int:
        row = self.pg.execute("SELECT count(*) FROM events WHERE run_id = %s", (run_id,)).fetchone()
        return int(row[0]) if row else 0

    def _sleeping(self, count: int) -> list[tuple[str, str]]:
        """`count` executions asleep for an hour, each waiting on its timer."""
        runs = [self._start("bench-sleep", {"until": time.time() + 3600}) for _ in range(count)]
        for _, run_id in runs:
            wait_for(
                lambda run_id=run_id: self._waiting(run_id),  # type: ignore[misc]
                self.config.timeout,
                "the sleep to start",
            )
        return runs

    def _cancels(self, *, busy: bool) -> list[float]:
        runs = self._sleeping(self.config.samples)
        blockers = self._occupy_workers() if busy else []
        samples = []
        try:
            for execution_id, _ in runs:
                started = time.perf_counter()
                self._post(f"/v1/workflows/executions/{execution_id}/cancel")
                wait_for(
                    lambda execution_id=execution_id: self._ended(execution_id),  # type: ignore[misc]
                    self.config.timeout,
                    "the cancelled execution to close",
                    # Fine-grained: the wait is what is measured.
                    interval=0.002,
                )
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            for execution_id in blockers:
                self.api.post(f"/v1/workflows/executions/{execution_id}/terminate")
        return samples

    def _ended(self, execution_id: str) -> bool:
        reply = self.api.get(f"/v1/workflows/executions/{execution_id}")
        return reply.json()["end_time"] is not None

    def _occupy_workers(self) -> list[str]:
        """Start one long activity per pool process, and wait until all of them run."""
        ids = []
        for _ in range(self.config.busy_processes):
            execution_id, run_id = self._start("bench-busy", {"seconds": 60})
            ids.append((execution_id, run_id))
        wait_for(
            lambda: all(self._count(r, "ACTIVITY_TASK_STARTED") for _, r in ids),
            self.config.timeout,
            "every pool process to be busy",
        )
        return [e for e, _ in ids]

    def _terminates(self) -> list[float]:
        runs = self._sleeping(self.config.samples)
        return [self._post(f"/v1/workflows/executions/{e}/terminate") for e, _ in runs]

    def _timer_lateness(self) -> dict[str, Any]:
        count = self.config.sleepers
        # Far enough ahead that every execution is asleep before the timers fall due.
        until = time.time() + 10 + count / 50

        def start_one(_: int) -> tuple[str, str]:
            return self._start("bench-sleep", {"until": until})

        with ThreadPoolExecutor(max_workers=8) as pool:
            runs = list(pool.map(start_one, range(count)))
        run_ids = [run_id for _, run_id in runs]
        wait_for(
            lambda: self._closed(run_ids) == count,
            until - time.time() + self.config.timeout,
            "every sleeper to wake",
        )
        rows = self.pg.execute(
            "SELECT (attributes->>'late_seconds')::float8 FROM events"
            " WHERE event_type = 'TIMER_FIRED' AND run_id = ANY(%s::uuid[])",
            (run_ids,),
        ).fetchall()
        lateness = [row[0] * 1000 for row in rows]
        return {"executions": count, "fired_late": percentiles(lateness)}

    def _closed(self, run_ids: list[str]) -> int:
        row = self.pg.execute(
            "SELECT count(*) FROM runs WHERE run_id = ANY(%s::uuid[]) AND status = 'COMPLETED'",
            (run_ids,),
        ).fetchone()
        return int(row[0]) if row else 0
