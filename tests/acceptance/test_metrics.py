"""`/metrics` on the Procfile's processes with default settings, scraped and parsed by
prometheus-client's own parser: what executions, attempts, retries, timers and the
sweeper did shows up in the cluster-wide counters; the gauges read the database and
the broker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Stack, start, wait_for_end
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    reply = http.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_what_executions_did(
    stack: Stack, http: httpx.Client, tmp_path: Path
) -> None:
    before = scrape(http)
    assert value(before, "chainline_database_up") == 1
    assert value(before, "chainline_broker_up") == 1

    flaky = start(http, "flaky", {"folder": str(tmp_path), "failures": 2})["execution_id"]
    sleeper = start(http, "sleeper", {"folder": str(tmp_path), "seconds": 0.2})["execution_id"]
    (tmp_path / "overdue").mkdir()
    overdue = start(http, "overdue-sleeper", {"folder": str(tmp_path / "overdue"), "seconds": 30})[
        "execution_id"
    ]
    # Open runs are counted by status while the overdue one runs (3 s).
    wait_until(
        lambda: value(scrape(http), "chainline_runs_open", status="RUNNING") >= 1,
        timeout=10,
        what="an open run to be counted",
    )
    assert wait_for_end(http, flaky)["status"] == "COMPLETED"
    assert wait_for_end(http, sleeper)["status"] == "COMPLETED"
    assert wait_for_end(http, overdue)["status"] == "TIMED_OUT"

    def grew(name: str, by: float, **labels: str) -> bool:
        return value(now, name, **labels) - value(before, name, **labels) >= by

    expected: list[tuple[str, float, dict[str, str]]] = [
        ("chainline_executions_started_total", 1, {"workflow": "flaky"}),
        ("chainline_executions_closed_total", 1, {"workflow": "flaky", "status": "COMPLETED"}),
        ("chainline_executions_closed_total", 1, {"workflow": "sleeper", "status": "COMPLETED"}),
        (
            "chainline_executions_closed_total",
            1,
            {"workflow": "overdue-sleeper", "status": "TIMED_OUT"},
        ),
        ("chainline_activity_attempts_total", 2, {"activity": "flaky", "outcome": "retrying"}),
        ("chainline_activity_attempts_total", 1, {"activity": "flaky", "outcome": "completed"}),
        ("chainline_activity_retries_total", 2, {"activity": "flaky"}),
        ("chainline_activity_attempt_duration_seconds_count", 3, {"activity": "flaky"}),
        ("chainline_timer_lateness_seconds_count", 1, {}),
        ("chainline_sweeper_actions_total", 1, {"action": "run_timed_out"}),
    ]
    now: Samples = {}

    def all_counted() -> bool:
        nonlocal now
        now = scrape(http)
        return all(grew(name, by, **labels) for name, by, labels in expected)

    # The sequencer counts events as it numbers them, within moments of their commit.
    try:
        wait_until(all_counted, timeout=20, what="the counters to count the executions")
    except AssertionError:
        missing = [(n, b, lab) for n, b, lab in expected if not grew(n, b, **lab)]
        raise AssertionError(f"not counted: {missing}") from None

    # A histogram's buckets are cumulative, and its +Inf bucket is its count.
    flaky_buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in now.items()
        if name == "chainline_activity_attempt_duration_seconds_bucket"
        and dict(labels)["activity"] == "flaky"
    )
    counts = [count for _, count in flaky_buckets]
    assert counts == sorted(counts)
    assert flaky_buckets[-1] == (
        float("inf"),
        value(now, "chainline_activity_attempt_duration_seconds_count", activity="flaky"),
    )
    assert value(now, "chainline_activity_attempt_duration_seconds_sum", activity="flaky") > 0
    # The timer was due 0.2 s after it started; it fired within a sweep of that.
    assert value(now, "chainline_timer_lateness_seconds_sum") >= 0

    # Both queues are read.
    settings_queue = stack.env["CHAINLINE_QUEUE"]
    for queue in (settings_queue, f"{settings_queue}.workflow-tasks"):
        assert ("chainline_queue_depth", frozenset({("queue", queue)})) in now
        assert ("chainline_queue_oldest_message_age_seconds", frozenset({("queue", queue)})) in now
