"""`chainline bench` runs end to end with tiny sizes and writes a well-formed report."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import redis

from tests.support import ADMIN_DATABASE_URL, BROKER_URL, CHAINLINE, newcomer_env, wait_until

REQUIRED = [
    ("raw_celery", "executions_per_s"),
    ("durable_limit", "executions_per_s"),
    ("sequential", "executions_per_s"),
    ("sequential", "ratio_to_raw_celery"),
    ("sequential", "ratio_to_durable_limit"),
    ("sequential", "pg_transactions_per_activity"),
    ("fan_out", "executions_per_s"),
    ("latency", "p50_ms"),
    ("latency", "p99_ms"),
]
INTERACTIONS = [
    "signal_to_activity_scheduled",
    "signal_request",
    "query",
    "update_round_trip",
    "cancel_to_closed",
    "terminate_to_closed",
    "cancel_to_closed_all_workers_busy",
]
# The DBOS Transact peer runs when the bench extra is installed, as it is in CI.
PEER_INSTALLED = importlib.util.find_spec("dbos") is not None
PEER_REQUIRED = [
    ("dbos", "executions_per_s"),
    ("dbos", "ratio_to_raw_celery"),
    ("sequential", "ratio_to_dbos"),
]


def _bench_keys() -> set[bytes]:
    """What bench runs left in the configured Redis (each uses a prefix of its own)."""
    return set(redis.Redis.from_url(BROKER_URL).scan_iter("chainline-bench-*"))


def test_bench_with_tiny_sizes_reports_every_figure(tmp_path: Path) -> None:
    keys_before = _bench_keys()
    report_path = tmp_path / "bench.json"
    env = newcomer_env()
    env.update(CHAINLINE_DATABASE_URL=ADMIN_DATABASE_URL, CHAINLINE_BROKER_URL=BROKER_URL)
    done = subprocess.run(
        [
            CHAINLINE,
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
            "--dbos-concurrency",
            "1,4",
            "--interaction-samples",
            "3",
            "--sleepers",
            "20",
            "--schedules",
            "20",
            "--schedule-window",
            "5",
            "--listing-runs",
            "2000",
            "--stream-clients",
            "5",
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
    for section, key in REQUIRED + (PEER_REQUIRED if PEER_INSTALLED else []):
        value = report[section][key]
        assert isinstance(value, float) and value > 0, (section, key, value)
    assert report["sequential"]["celery_messages_per_activity"] > 0
    interactions = report["interactions"]
    for name in INTERACTIONS:
        assert interactions[name]["samples"] == 3, name
        assert 0 < interactions[name]["p50_ms"] <= interactions[name]["p99_ms"], name
    assert interactions["query"]["history_events"] > 10
    assert interactions["timers"]["executions"] == 20
    assert interactions["timers"]["fired_late"]["samples"] == 20
    assert "signal_to_activity_scheduled.p50_ms" in done.stdout
    scheduled = report["schedules"]
    assert scheduled["schedules"] == scheduled["ticks_fired"] == 20
    assert scheduled["ticks_fired_twice"] == 0
    assert 0 <= scheduled["lateness"]["p50_ms"] <= scheduled["lateness"]["p99_ms"]
    assert scheduled["window_seconds"] >= 5 and scheduled["beat_cpu_seconds"] > 0
    assert "beat CPU" in done.stdout
    listing = report["runs_listing"]
    assert listing["runs"] >= 2000 and listing["page_size"] == 50
    for name in ("workflow", "rare_status", "root_tree", "search_key_exact", "second_page"):
        assert 0 < listing[name]["p50_ms"] <= listing[name]["p99_ms"], name
        assert listing[name]["runs_on_page"] > 0, name
    assert listing["root_tree"]["runs_on_page"] == 10
    assert "runs_listing.worst_p99_ms" in done.stdout
    streams = report["streams"]
    assert streams["clients"] == 5 and streams["frames_timed"] >= 3 * streams["executions"]
    for figure in ("event_to_frame", "event_to_frame_with_all_clients"):
        assert 0 < streams[figure]["p50_ms"] <= streams[figure]["p99_ms"], figure
    assert "streams.event_to_frame" in done.stdout
    assert set(report["sequential"]["cpu_seconds"]) >= {"worker", "api", "postgres", "redis"}
    if PEER_INSTALLED:
        assert "sequential.ratio_to_dbos" in done.stdout
        assert report["dbos"]["cpu_seconds"]["dbos_worker"] > 0
        # DBOS ran at the fastest of the worker concurrencies it was tried at.
        sweep = report["dbos"]["sweep_executions_per_s"]
        assert set(sweep) == {"1", "4"} and all(v > 0 for v in sweep.values())
        assert str(report["dbos"]["worker_concurrency"]) == max(sweep, key=sweep.__getitem__)
    else:
        assert "bench extra" in report["dbos"]["skipped"]
    assert _bench_keys() - keys_before == set()  # queues and results tidied


def test_bench_stopped_with_sigterm_leaves_no_process_behind() -> None:
    keys_before = _bench_keys()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAINLINE_")}
    env.update(CHAINLINE_DATABASE_URL=ADMIN_DATABASE_URL, CHAINLINE_BROKER_URL=BROKER_URL)
    bench = subprocess.Popen(
        [CHAINLINE, "bench", "-n", "200", "--rounds", "50", "--no-peer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = psutil.Process(bench.pid)

    def command_line(process: psutil.Process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile, like `chainline migrate`
            return ""

    def all_started() -> list[psutil.Process]:
        processes = started.children(recursive=True)
        celery = [p for p in processes if "celery" in command_line(p)]
        # beat, the worker and its two pool processes
        return processes if len(celery) >= 4 else []

    family: list[psutil.Process] = []
    try:
        family = wait_until(all_started, timeout=60, what="the bench's processes")
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        assert bench.returncode == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(family, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        assert _bench_keys() - keys_before == set()
    finally:
        if not family and started.is_running():
            family = started.children(recursive=True)
        for process in [*family, started]:
            if process.is_running():
                process.kill()
        bench.wait(timeout=10)
