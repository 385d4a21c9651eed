"""`chainline bench` runs end to end with tiny sizes and writes a well-formed report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support import ADMIN_DATABASE_URL, BROKER_URL

REQUIRED = [
    ("raw_celery", "executions_per_s"),
    ("sequential", "executions_per_s"),
    ("sequential", "ratio_to_raw_celery"),
    ("sequential", "pg_transactions_per_activity"),
    ("fan_out", "executions_per_s"),
    ("latency", "p50_ms"),
    ("latency", "p99_ms"),
]


def test_bench_with_tiny_sizes_reports_every_figure(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINLINE_")}
    env.update(CHAINLINE_DATABASE_URL=ADMIN_DATABASE_URL, CHAINLINE_BROKER_URL=BROKER_URL)
    done = subprocess.run(
        [
            "chainline",
            "bench",
            "-n",
            "4",
            "-s",
            "2",
            "-m",
            "4",
            "-k",
            "2",
            "--rounds",
            "1",
            "--warmup-rounds",
            "0",
            "--json",
            str(report_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sequential.ratio_to_raw_celery" in done.stdout
    report = json.loads(report_path.read_text())
    for section, key in REQUIRED:
        value = report[section][key]
        assert isinstance(value, float) and value > 0, (section, key, value)
    assert report["sequential"]["celery_messages_per_activity"] > 0
    assert set(report["sequential"]["cpu_seconds"]) >= {"worker", "api", "postgres", "redis"}
