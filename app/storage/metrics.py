"""Cluster-wide metric totals, kept in Postgres so that every API process reports the
same numbers, whichever worker did the work.

The sequencer (app/storage/streams.py) adds what each event it numbers measures, in
the transaction that moves its cursor past the event: each event is counted once,
however many processes run the sequencer and whichever of them crashes. The sweeper
adds its actions. A row holds one metric's total for one label set; a histogram keeps
one row per bucket (counted alone, with `le` its upper bound) and one for its sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from app.model import events as ev
from app.model.statuses import OPEN_STATUSES
from app.storage.transactions import Transaction

# Upper bounds of the histograms' buckets, in seconds (+Inf is implied).
ATTEMPT_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
TIMER_LATENESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CLOSING_EVENTS = (
    ev.WORKFLOW_EXECUTION_COMPLETED,
    ev.WORKFLOW_EXECUTION_FAILED,
    ev.WORKFLOW_EXECUTION_CANCELED,
    ev.WORKFLOW_EXECUTION_TERMINATED,
    ev.WORKFLOW_EXECUTION_TIMED_OUT,
    ev.WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
)
# An attempt's outcome: it succeeded, failed and will be retried, or failed for good.
ATTEMPT_OUTCOMES = (ev.ACTIVITY_TASK_COMPLETED, ev.ACTIVITY_TASK_RETRYING, ev.ACTIVITY_TASK_FAILED)
MEASURED_EVENTS = (
    ev.WORKFLOW_EXECUTION_STARTED,
    *CLOSING_EVENTS,
    *ATTEMPT_OUTCOMES,
    ev.TIMER_FIRED,
)


def sequencer_parameters() -> dict[str, Any]:
    """What the sequencer's statement needs to measure the events it numbers."""
    return {
        "measured": list(MEASURED_EVENTS),
        "closings": list(CLOSING_EVENTS),
        "attempt_outcomes": list(ATTEMPT_OUTCOMES),
        "attempt_buckets": list(ATTEMPT_SECONDS_BUCKETS),
        "lateness_buckets": list(TIMER_LATENESS_BUCKETS),
    }


@dataclass(frozen=True)
class Total:
    metric: str
    labels: dict[str, Any]  # JSON: a value may be null
    value: float


def add_to_totals(tx: Transaction, metric: str, amounts: Mapping[str, float], label: str) -> None:
    """Add each amount to `metric`'s total for `{label: key}` (zero amounts are skipped)."""
    added = {key: amount for key, amount in amounts.items() if amount}
    if not added:
        return
    tx.send(
        "add_to_metric_totals",
        {
            "metrics": [metric] * len(added),
            "labels": [Jsonb({label: key}) for key in added],
            "amounts": list(added.values()),
        },
    )


def read_totals(tx: Transaction) -> list[Total]:
    rows = tx.fetch_all("read_metric_totals", {})
    return [Total(metric, labels, float(value)) for metric, labels, value in rows]


def count_open_runs(tx: Transaction) -> dict[str, int]:
    """How many runs are open, by status."""
    rows = tx.fetch_all("count_open_runs", {"open": sorted(OPEN_STATUSES)})
    return {status: int(count) for status, count in rows}
