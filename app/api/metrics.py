"""`GET /metrics`: Prometheus's text format, read at scrape time.

Counters and histograms come from the cluster-wide totals in Postgres
(app/storage/metrics.py), so every API process reports the same numbers; gauges are
read as they stand: open runs from Postgres, queue depth and the oldest message's age
from the broker. A part that cannot be read is left out of that scrape, and
`chainline_database_up` / `chainline_broker_up` say which.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.messaging.dispatcher import get_dispatcher
from app.messaging.queues import QueueState, read_queues
from app.model.statuses import OPEN_STATUSES
from app.settings import get_settings
from app.storage.db import get_engine
from app.storage.metrics import (
    ATTEMPT_SECONDS_BUCKETS,
    TIMER_LATENESS_BUCKETS,
    Total,
    count_open_runs,
    read_totals,
)
from app.storage.transactions import transaction

log = logging.getLogger(__name__)
router = APIRouter()

# Counters: (stored name, exposed name, help, label names).
COUNTERS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("executions_started", "chainline_executions_started",
     "Executions started, by workflow (a continue-as-new successor is an execution of its"
     " own).", ("workflow",)),
    ("executions_closed", "chainline_executions_closed",
     "Runs closed, by workflow and the status they closed with.", ("workflow", "status")),
    ("activity_attempts", "chainline_activity_attempts",
     "Activity attempts that ran to an outcome (completed, retrying, failed).",
     ("activity", "outcome")),
    ("activity_retries", "chainline_activity_retries",
     "Failed activity attempts followed by another attempt.", ("activity",)),
    ("sweeper_actions", "chainline_sweeper_actions",
     "What the sweeper did: timeouts enforced, children closed, stalled work resent.",
     ("action",)),
)  # fmt: skip
# Histograms: (stored name, exposed name, help, label names, bucket bounds).
HISTOGRAMS: tuple[tuple[str, str, str, tuple[str, ...], tuple[float, ...]], ...] = (
    ("activity_attempt_seconds", "chainline_activity_attempt_duration_seconds",
     "Activity attempts' durations, from STARTED to their outcome (Postgres's clock).",
     ("activity",), ATTEMPT_SECONDS_BUCKETS),
    ("timer_lateness_seconds", "chainline_timer_lateness_seconds",
     "How long after its fire time each durable timer fired.", (), TIMER_LATENESS_BUCKETS),
)  # fmt: skip


class ChainlineCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        database_up = GaugeMetricFamily(
            "chainline_database_up", "Whether this scrape could read Postgres."
        )
        try:
            with transaction(get_engine()) as tx:
                totals = read_totals(tx)
                open_runs = count_open_runs(tx)
        except Exception:
            log.exception("metrics: Postgres could not be read")
            database_up.add_metric([], 0)
        else:
            database_up.add_metric([], 1)
            yield from _totals(totals)
            yield _open_runs(open_runs)
        yield database_up
        yield from _queues()


def _label_values(labels: Mapping[str, object], names: Sequence[str]) -> list[str]:
    return ["" if labels.get(name) is None else str(labels[name]) for name in names]


def _totals(totals: Iterable[Total]) -> Iterator[Metric]:
    by_metric: dict[str, list[Total]] = defaultdict(list)
    for total in totals:
        by_metric[total.metric].append(total)
    for stored, name, documentation, labels in COUNTERS:
        counter = CounterMetricFamily(name, documentation, labels=labels)
        for total in by_metric[stored]:
            counter.add_metric(_label_values(total.labels, labels), total.value)
        yield counter
    for stored, name, documentation, labels, bounds in HISTOGRAMS:
        yield _histogram(
            HistogramMetricFamily(name, documentation, labels=labels),
            labels,
            bounds,
            by_metric[stored + "_bucket"],
            by_metric[stored + "_sum"],
        )


def _histogram(
    family: HistogramMetricFamily,
    labels: Sequence[str],
    bounds: Sequence[float],
    buckets: list[Total],
    sums: list[Total],
) -> HistogramMetricFamily:
    """Stored bucket rows count their bucket alone; Prometheus's are cumulative."""
    counts: dict[tuple[str, ...], dict[float, float]] = defaultdict(dict)
    for row in buckets:
        key = tuple(_label_values(row.labels, labels))
        # A bound no longer among the buckets (they changed) counts in the next one up.
        upper = min((b for b in bounds if b >= float(str(row.labels["le"]))), default=math.inf)
        counts[key][upper] = counts[key].get(upper, 0.0) + row.value
    total_of = {tuple(_label_values(row.labels, labels)): row.value for row in sums}
    for key, by_bound in counts.items():
        cumulative, running = [], 0.0
        for bound in [*bounds, math.inf]:
            running += by_bound.get(bound, 0.0)
            cumulative.append((("+Inf" if math.isinf(bound) else repr(bound)), running))
        family.add_metric(list(key), cumulative, total_of.get(key, 0.0))
    return family


def _open_runs(open_runs: dict[str, int]) -> Metric:
    gauge = GaugeMetricFamily("chainline_runs_open", "Open runs, by status.", labels=["status"])
    for status in sorted(OPEN_STATUSES):
        gauge.add_metric([status.value], open_runs.get(status.value, 0))
    return gauge


def _queues() -> Iterator[Metric]:
    settings = get_settings()
    broker_up = GaugeMetricFamily(
        "chainline_broker_up", "Whether this scrape could read the broker."
    )
    try:
        states = read_queues(
            get_dispatcher().app,
            [settings.queue, settings.workflow_task_queue],
            key_prefix=settings.broker_key_prefix,
        )
    except Exception:
        log.exception("metrics: the broker could not be read")
        broker_up.add_metric([], 0)
        yield broker_up
        return
    broker_up.add_metric([], 1)
    yield broker_up
    yield from _queue_gauges(states)


def _queue_gauges(states: list[QueueState]) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "chainline_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "chainline_queue_oldest_message_age_seconds",
        "How long the next message of each queue has waited (Redis brokers; 0 when empty).",
        labels=["queue"],
    )
    for state in states:
        depth.add_metric([state.name], state.depth)
        if state.depth == 0:
            age.add_metric([state.name], 0.0)
        elif state.oldest_age_seconds is not None:
            age.add_metric([state.name], state.oldest_age_seconds)
    yield depth
    yield age


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(ChainlineCollector())


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics() -> Response:
    """Chainline's metrics in Prometheus's text format (the cluster's totals)."""
    return Response(generate_latest(REGISTRY), media_type="text/plain; version=0.0.4")
