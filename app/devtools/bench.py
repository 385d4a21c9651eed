"""`chainline bench`: Chainline against raw Celery, same machine, same broker, one run.

Every contender runs on the same worker processes (same concurrency and pool, same
Celery settings). With the `bench` extra installed, DBOS Transact runs the sequential
workflow too, on as many worker processes, against the same Postgres server (see
app/devtools/bench_peer.py). Postgres write transactions are counted from the server's transaction
id counter, broker messages from Redis' LPUSH count, CPU from each process's own clock.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import psycopg
import redis

from app.devtools.bench_interactions import InteractionConfig, Interactions
from app.devtools.bench_runs import RunListingBenchConfig, measure_run_listing
from app.devtools.bench_schedules import ScheduleBenchConfig, measure_schedules
from app.devtools.bench_streams import StreamBenchConfig, measure_streams
from app.devtools.measuring import percentile, wait_for
from app.processes import with_scripts_on_path
from app.settings import REDIS_BROKER_SCHEMES, libpq_url
from app.storage.queries import QUERIES

if TYPE_CHECKING:
    from app.devtools.bench_peer import DbosPeer

BENCH_WORKFLOWS = "app.devtools.bench_workflows"
# Imported by the bench's worker besides the tasks of every worker: raw Celery's no-op.
BENCH_TASKS = "app.devtools.bench_tasks"


@dataclass(frozen=True)
class BenchConfig:
    executions: int = 50  # N
    steps: int = 5  # S
    latency_samples: int = 50  # M
    api_clients: int = 8  # K
    api_requests_per_client: int = 20
    rounds: int = 5
    warmup_rounds: int = 1
    concurrency: int = 2
    pool: str = "prefork"
    preload_events: int = 0
    timeout: float = 120.0
    peer: bool = True  # run the DBOS Transact peer when the bench extra is installed
    # DBOS worker concurrencies tried before the rounds; the fastest runs in them.
    dbos_concurrency: tuple[int, ...] = (1, 2, 4, 8)
    dbos_sweep_rounds: int = 2
    # Signals, queries, updates, cancels and terminates measured, each.
    interaction_samples: int = 30
    # Executions whose timers fall due at once (timer lateness).
    sleepers: int = 1000
    # Schedules due every minute, at the same second; beat's CPU is measured over a
    # window of schedule_window seconds holding their tick.
    schedules: int = 1000
    schedule_window: float = 60.0
    # Runs written for the runs API's listing figures (pages of each filter).
    listing_runs: int = 1_000_000
    # Clients holding the global event stream open on the one API process.
    stream_clients: int = 200


@dataclass
class Servers:
    database_url: str
    broker_url: str
    admin_url: str
    postgres_pids: Callable[[], list[int]]
    redis_pids: Callable[[], list[int]]


def _processes_named(name: str) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["name"])
        if p.info["name"] and p.info["name"].startswith(name)
    ]


def _process_tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@contextmanager
def _servers(work_dir: Path) -> Iterator[Servers]:
    """The configured Postgres and broker, or embedded ones; a scratch database on it."""
    from app.devtools.devstack import EmbeddedPostgres, EmbeddedRedis

    runtime_dir = work_dir / "run"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    embedded_pg = EmbeddedPostgres(work_dir / "postgres")
    embedded_redis = EmbeddedRedis(work_dir / "redis")
    try:
        admin_url = os.environ.get("CHAINLINE_DATABASE_URL") or embedded_pg.start()
        broker_url = os.environ.get("CHAINLINE_BROKER_URL") or embedded_redis.start()
        admin_url = libpq_url(admin_url)
        postmaster = embedded_pg.server.get_pid() if embedded_pg.server else None
        redis_pid = embedded_redis.process.pid if embedded_redis.process else None
        with _scratch_database(admin_url, "chainline_bench") as database_url:
            yield Servers(
                database_url=database_url,
                broker_url=broker_url,
                admin_url=admin_url,
                postgres_pids=lambda: (
                    _process_tree(postmaster) if postmaster else _processes_named("postgres")
                ),
                redis_pids=lambda: [redis_pid] if redis_pid else _processes_named("redis-server"),
            )
    finally:
        embedded_redis.stop()
        embedded_pg.stop()


@contextmanager
def _scratch_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new database on the admin URL's server, dropped on the way out; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return f"{base}?{query}" if query else base


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cpu_seconds(self) -> dict[str, float]:
        return {name: _tree_cpu(process.pid) for name, process in self.processes.items()}


def _tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def _pids_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@contextmanager
def _stack(servers: Servers, config: BenchConfig, work_dir: Path) -> Iterator[Stack]:
    from app.devtools.devstack import free_port

    port = free_port()
    env = {
        **with_scripts_on_path(os.environ),
        "CHAINLINE_DATABASE_URL": servers.database_url,
        "CHAINLINE_BROKER_URL": servers.broker_url,
        "CHAINLINE_BROKER_KEY_PREFIX": f"chainline-bench-{uuid.uuid4().hex[:8]}:",
        "CHAINLINE_WORKFLOWS": BENCH_WORKFLOWS,
        "CHAINLINE_BEAT_SCHEDULE_FILE": str(work_dir / "beat-schedule"),
        "CHAINLINE_FLOWER_BASIC_AUTH": "bench:bench",
        "PORT": str(port),
    }
    subprocess.run(["chainline", "migrate"], env=env, check=True, capture_output=True)
    stack = Stack(env=env, api_url=f"http://127.0.0.1:{port}")
    commands = {
        "api": ["chainline", "api"],
        "worker": [
            "chainline",
            "worker",
            f"--concurrency={config.concurrency}",
            f"--pool={config.pool}",
            f"--include={BENCH_TASKS}",
            "--loglevel=WARNING",
        ],
        "beat": ["chainline", "beat", "--loglevel=WARNING"],
    }
    try:
        for name, command in commands.items():
            with (work_dir / f"{name}.log").open("ab") as log:
                stack.processes[name] = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        yield stack
    finally:
        for process in stack.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in stack.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        delete_keys(servers.broker_url, env["CHAINLINE_BROKER_KEY_PREFIX"])


def delete_keys(broker_url: str, prefix: str) -> None:
    """Leave a Redis broker as it was: every key under `prefix` goes."""
    if not broker_url.startswith(REDIS_BROKER_SCHEMES):
        return
    client = redis.Redis.from_url(broker_url)
    try:
        with client.pipeline(transaction=False) as deleting:
            for key in client.scan_iter(f"{prefix}*", count=1000):
                deleting.delete(key)
            deleting.execute()
    except redis.RedisError:
        pass  # an embedded Redis already stopped, or one gone away: nothing to tidy
    finally:
        client.close()


class Probe:
    """Counters read before and after each measurement."""

    def __init__(
        self,
        servers: Servers,
        stack: Stack,
        other_processes: Mapping[str, Callable[[], list[int]]] | None = None,
    ) -> None:
        self.servers = servers
        self.stack = stack
        self.other_processes = dict(other_processes or {})
        # Messages are counted on a Redis broker only (kombu publishes with LPUSH).
        self.redis = (
            redis.Redis.from_url(servers.broker_url)
            if servers.broker_url.startswith(REDIS_BROKER_SCHEMES)
            else None
        )
        self.pg = psycopg.connect(servers.database_url, autocommit=True)
        self.listener = psycopg.connect(servers.database_url, autocommit=True)
        self.listener.execute(QUERIES["listen_for_closings"].text.encode())
        self.may_checkpoint = True

    def snapshot(self) -> dict[str, float]:
        row = self.pg.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
        assert row is not None
        stats = self.redis.info("commandstats") if self.redis is not None else {}
        cpu = {f"cpu_{k}": v for k, v in self.stack.cpu_seconds().items()}
        cpu["cpu_postgres"] = _pids_cpu(self.servers.postgres_pids())
        cpu["cpu_redis"] = _pids_cpu(self.servers.redis_pids())
        for kind, pids in self.other_processes.items():
            cpu[f"cpu_{kind}"] = _pids_cpu(pids())
        cpu["cpu_bench_client"] = sum(os.times()[:2])
        return {
            "xid": float(row[0]),
            "lpush": float(stats.get("cmdstat_lpush", {}).get("calls", 0)),
            "time": time.perf_counter(),
            **cpu,
        }

    def settle_postgres(self) -> None:
        """Flush what the previous contender left dirty, so that no contender pays for
        another's writes (the DBOS peer writes the most). Needs a role allowed to
        CHECKPOINT; without one, contenders run as they come."""
        if self.may_checkpoint:
            try:
                self.pg.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                self.may_checkpoint = False

    def results_stored(self, keys: list[str]) -> bool:
        assert self.redis is not None, "the raw Celery baseline needs a Redis result backend"
        return all(value is not None for value in self.redis.mget(keys))

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def _wait_all_closed(probe: Probe, execution_ids: list[str], timeout: float) -> None:
    """Wait on the closing NOTIFY of each execution, then check they all completed."""
    pending = set(execution_ids)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)}/{len(execution_ids)} executions still open")
        for notification in probe.listener.notifies(timeout=0.5):
            pending.discard(notification.payload)
            if not pending:
                break
        else:
            pending &= _still_open(probe, pending)
    row = probe.pg.execute(
        "SELECT count(*) FROM executions e JOIN runs r ON r.run_id = e.current_run_id"
        " WHERE e.execution_id = ANY(%s) AND r.status = 'COMPLETED'",
        (execution_ids,),
    ).fetchone()
    assert row is not None
    if row[0] != len(execution_ids):
        raise RuntimeError(f"{len(execution_ids) - row[0]} bench executions did not complete")


def _still_open(probe: Probe, candidates: set[str]) -> set[str]:
    rows = probe.pg.execute(
        "SELECT e.execution_id FROM executions e JOIN runs r ON r.run_id = e.current_run_id"
        " WHERE e.execution_id = ANY(%s) AND r.end_time IS NULL",
        (list(candidates),),
    )
    return {row[0] for row in rows}


def _measure(probe: Probe, run: Callable[[], None]) -> dict[str, float]:
    probe.settle_postgres()
    before = probe.snapshot()
    run()
    return Probe.delta(before, probe.snapshot())


def run_benchmark(config: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    with ExitStack() as stack_scope:
        work_dir = Path(stack_scope.enter_context(tempfile.TemporaryDirectory()))
        servers = stack_scope.enter_context(_servers(work_dir))
        os.environ.update(
            {"CHAINLINE_DATABASE_URL": servers.database_url, "CHAINLINE_WORKFLOWS": BENCH_WORKFLOWS}
        )
        stack = stack_scope.enter_context(_stack(servers, config, work_dir))
        os.environ["CHAINLINE_BROKER_URL"] = servers.broker_url
        os.environ["CHAINLINE_BROKER_KEY_PREFIX"] = stack.env["CHAINLINE_BROKER_KEY_PREFIX"]
        return _run_contenders(config, servers, stack, work_dir, log)
    raise AssertionError("unreachable")


def _run_contenders(
    config: BenchConfig,
    servers: Servers,
    stack: Stack,
    work_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from app.devtools.bench_tasks import CREATE_DURABLE_TABLES, durable_step, raw_noop
    from app.settings import get_settings
    from app.storage.db import get_engine
    from workers.celery_app import app as celery_app
    from workers.celery_app import registry

    get_settings.cache_clear()
    get_engine.cache_clear()
    engine = get_engine()
    _wait_ready(stack, celery_app, config.timeout)
    peer_skipped = _peer_skipped(config)
    with ExitStack() as peer_scope:
        peer: DbosPeer | None = None
        dbos_sweep: dict[int, float] = {}
        best = 0
        if peer_skipped is None:
            dbos_sweep = _sweep_dbos(config, servers, work_dir, log)
            best = max(dbos_sweep, key=lambda level: dbos_sweep[level])
            log(
                f"starting the DBOS peer: {config.concurrency} worker processes,"
                f" worker concurrency {best} (its fastest)"
            )
            peer = peer_scope.enter_context(_dbos_peer(config, servers, work_dir, best))
        else:
            log(f"DBOS peer skipped: {peer_skipped}")
        probe = Probe(servers, stack, {"dbos_worker": peer.pids} if peer else None)
        if config.preload_events:
            log(f"preloading {config.preload_events} history events ...")
            _preload_events(probe, config.preload_events)

        probe.pg.execute(CREATE_DURABLE_TABLES)
        contenders: dict[str, Callable[[], None]] = {
            "raw_celery": _raw_celery_round(config, probe, raw_noop, celery_app),
            "durable_limit": _durable_limit_round(config, probe, durable_step, celery_app),
            "sequential": _chainline_round(config, probe, engine, registry, "bench-sequential"),
            "fan_out": _chainline_round(config, probe, engine, registry, "bench-fan-out"),
        }
        if peer is not None:
            contenders["dbos"] = peer.run_round
        rounds = _run_rounds(config, probe, contenders, log)

    report = _throughput_report(config, rounds)
    if peer_skipped is not None:
        report["dbos"] = {"skipped": peer_skipped}
    else:
        report["dbos"]["worker_concurrency"] = best
        report["dbos"]["sweep_executions_per_s"] = {str(k): v for k, v in dbos_sweep.items()}
    _wait_idle(probe, stack, config.timeout)
    report["latency"] = _latency(stack, config)
    report["api"] = _api_load(stack, probe, config)
    log("measuring signals, queries, updates, cancel, terminate and timers ...")
    interactions = Interactions(
        stack.api_url,
        servers.database_url,
        InteractionConfig(
            samples=config.interaction_samples,
            sleepers=config.sleepers,
            busy_processes=config.concurrency,
            timeout=config.timeout,
        ),
    )
    try:
        report["interactions"] = interactions.measure()
    finally:
        interactions.close()
    log(f"measuring {config.schedules} schedules due at once, on one beat ...")
    report["schedules"] = measure_schedules(
        stack.api_url,
        servers.database_url,
        lambda: _tree_cpu(stack.processes["beat"].pid),
        ScheduleBenchConfig(
            schedules=config.schedules,
            window_seconds=config.schedule_window,
            timeout=config.timeout,
        ),
    )
    log(f"following the event stream with {config.stream_clients} clients ...")
    report["streams"] = measure_streams(
        stack.api_url,
        servers.database_url,
        StreamBenchConfig(
            clients=config.stream_clients,
            executions=max(10, config.latency_samples),
            timeout=config.timeout,
        ),
    )
    # Last: the runs it writes would weigh on every other figure.
    log(f"writing {config.listing_runs} runs and timing pages of the runs API ...")
    report["runs_listing"] = measure_run_listing(
        stack.api_url,
        servers.database_url,
        RunListingBenchConfig(runs=config.listing_runs, timeout=config.timeout),
    )
    return report


def _peer_skipped(config: BenchConfig) -> str | None:
    """Why the DBOS peer does not run, or None when it does."""
    if not config.peer:
        return "turned off with --no-peer"
    if importlib.util.find_spec("dbos") is None:
        return "install the bench extra: pip install -e '.[bench]'"
    return None


@contextmanager
def _dbos_peer(
    config: BenchConfig, servers: Servers, work_dir: Path, worker_concurrency: int
) -> Iterator[DbosPeer]:
    from app.devtools.bench_peer import dbos_peer

    with (
        _scratch_database(servers.admin_url, "chainline_bench_dbos") as database_url,
        dbos_peer(
            database_url,
            workers=config.concurrency,
            executions=config.executions,
            steps=config.steps,
            timeout=config.timeout,
            work_dir=work_dir,
            worker_concurrency=worker_concurrency,
        ) as peer,
    ):
        yield peer


def _sweep_dbos(
    config: BenchConfig, servers: Servers, work_dir: Path, log: Callable[[str], None]
) -> dict[int, float]:
    """DBOS's executions/s at each worker concurrency tried, so that the rounds run it
    at its best, not at a setting that handicaps it."""
    measured = {}
    for level in config.dbos_concurrency:
        with _dbos_peer(config, servers, work_dir, level) as peer:
            peer.run_round()  # warm-up
            times = []
            for _ in range(config.dbos_sweep_rounds):
                started = time.perf_counter()
                peer.run_round()
                times.append(time.perf_counter() - started)
        measured[level] = config.executions / statistics.median(times)
        log(f"   sweep dbos worker concurrency {level}: {measured[level]:.1f} exec/s")
    return measured


def _run_rounds(
    config: BenchConfig,
    probe: Probe,
    contenders: dict[str, Callable[[], None]],
    log: Callable[[str], None],
) -> dict[str, list[dict[str, float]]]:
    """Each round runs every contender once, in turn; warm-up rounds are not kept."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for index in range(config.warmup_rounds + config.rounds):
        label = "warm-up" if index < config.warmup_rounds else f"round {index}"
        for name, run in contenders.items():
            measured = _measure(probe, run)
            if index >= config.warmup_rounds:
                rounds[name].append(measured)
            log(f"{label:>8} {name:<11} {measured['time']:.2f}s")
    return rounds


def _throughput_report(
    config: BenchConfig, rounds: dict[str, list[dict[str, float]]]
) -> dict[str, Any]:
    activities = config.executions * config.steps
    report: dict[str, Any] = {
        "config": config.__dict__,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    for name, samples in rounds.items():
        report[name] = _summarise(samples, config.executions, activities)
    for name in rounds:
        if name != "raw_celery":
            _add_ratio(report[name], "ratio_to_raw_celery", rounds[name], rounds["raw_celery"])
    _add_ratio(
        report["sequential"],
        "ratio_to_durable_limit",
        rounds["sequential"],
        rounds["durable_limit"],
    )
    if "dbos" in rounds:
        _add_ratio(report["sequential"], "ratio_to_dbos", rounds["sequential"], rounds["dbos"])
    return report


def _add_ratio(
    summary: dict[str, Any],
    key: str,
    measured: list[dict[str, float]],
    baseline: list[dict[str, float]],
) -> None:
    """Throughput of `measured` over `baseline`, compared round by round (same work)."""
    ratios = [base["time"] / m["time"] for m, base in zip(measured, baseline, strict=True)]
    summary[key] = statistics.median(ratios)
    summary[f"{key}_min_max"] = [min(ratios), max(ratios)]


def _raw_celery_round(
    config: BenchConfig, probe: Probe, raw_noop: Any, celery_app: Any
) -> Callable[[], None]:
    from celery import chain

    prefix = celery_app.conf.result_backend_transport_options.get("global_keyprefix", "")

    def run() -> None:
        # Only each chain's last task stores a result: its arrival ends the chain.
        last_ids = []
        for _ in range(config.executions):
            steps = [raw_noop.si(i).set(ignore_result=True) for i in range(config.steps - 1)]
            last_ids.append(chain(*steps, raw_noop.si(config.steps - 1)).apply_async().id)
        keys = [f"{prefix}celery-task-meta-{task_id}" for task_id in last_ids]
        wait_for(lambda: probe.results_stored(keys), config.timeout, "raw Celery chains")

    return run


def _durable_limit_round(
    config: BenchConfig, probe: Probe, durable_step: Any, celery_app: Any
) -> Callable[[], None]:
    """Raw Celery chains whose every task claims and records its step in Postgres: the
    fastest a Celery chain can go while keeping what Chainline keeps per activity."""
    from celery import chain

    prefix = celery_app.conf.result_backend_transport_options.get("global_keyprefix", "")

    def run() -> None:
        chain_ids = [uuid.uuid4().hex for _ in range(config.executions)]
        # What starting an execution records, as Chainline's rounds do too.
        probe.pg.execute(
            "INSERT INTO bench_steps (chain_id, step, state)"
            " SELECT c, s, 'scheduled' FROM unnest(%s::text[]) AS c,"
            " generate_series(0, %s - 1) AS s",
            (chain_ids, config.steps),
        )
        last_ids = []
        for chain_id in chain_ids:
            steps = [
                durable_step.si(chain_id, i).set(ignore_result=True)
                for i in range(config.steps - 1)
            ]
            last = durable_step.si(chain_id, config.steps - 1)
            last_ids.append(chain(*steps, last).apply_async().id)
        keys = [f"{prefix}celery-task-meta-{task_id}" for task_id in last_ids]
        wait_for(lambda: probe.results_stored(keys), config.timeout, "durable chains")

    return run


def _chainline_round(
    config: BenchConfig, probe: Probe, engine: Any, registry: Any, workflow: str
) -> Callable[[], None]:
    from app.engine.dispatch import FollowUp
    from app.engine.executions import start_execution
    from app.messaging.dispatcher import get_dispatcher

    definition = registry.workflow(workflow)

    def run() -> None:
        ids = []
        for _ in range(config.executions):
            record, first_task = start_execution(
                engine,
                definition,
                execution_id=uuid.uuid4().hex,
                input_value={"steps": config.steps},
            )
            get_dispatcher().send([FollowUp("started", dispatches=(first_task,))])
            ids.append(record.execution_id)
        _wait_all_closed(probe, ids, config.timeout)

    return run


def _summarise(
    measured: list[dict[str, float]], executions: int, activities: int
) -> dict[str, Any]:
    per_s = [executions / m["time"] for m in measured]
    act_per_s = [activities / m["time"] for m in measured]
    summary: dict[str, Any] = {
        "executions_per_s": statistics.median(per_s),
        "executions_per_s_min_max": [min(per_s), max(per_s)],
        "activities_per_s": statistics.median(act_per_s),
        "activities_per_s_min_max": [min(act_per_s), max(act_per_s)],
        "pg_transactions_per_activity": statistics.median(m["xid"] / activities for m in measured),
        "celery_messages_per_activity": statistics.median(
            m["lpush"] / activities for m in measured
        ),
        "cpu_seconds": {
            key.removeprefix("cpu_"): statistics.median(m[key] for m in measured)
            for key in measured[0]
            if key.startswith("cpu_")
        },
    }
    return summary


LATENCY_WARMUP_SAMPLES = 5


def _wait_idle(probe: Probe, stack: Stack, timeout: float) -> None:
    """Latency is measured on an idle system: nothing left queued from the rounds."""
    if probe.redis is None:
        return
    queue = stack.env["CHAINLINE_BROKER_KEY_PREFIX"] + stack.env.get("CHAINLINE_QUEUE", "chainline")
    redis_client = probe.redis
    wait_for(lambda: redis_client.llen(queue) == 0, timeout, "the queue to drain")
    time.sleep(0.5)  # let the tasks just taken from the queue finish


def _latency(stack: Stack, config: BenchConfig) -> dict[str, float]:
    samples = []
    with httpx.Client(base_url=stack.api_url, timeout=config.timeout) as client:
        for index in range(LATENCY_WARMUP_SAMPLES + config.latency_samples):
            started = time.perf_counter()
            reply = client.post(
                "/v1/workflows/bench-one/execute",
                json={"wait_for_result": True, "timeout_seconds": config.timeout},
            )
            if index >= LATENCY_WARMUP_SAMPLES:
                samples.append((time.perf_counter() - started) * 1000)
            if reply.json().get("result") != 0:
                raise RuntimeError(f"latency execution did not complete: {reply.text}")
    return {
        "p50_ms": percentile(samples, 0.50),
        "p95_ms": percentile(samples, 0.95),
        "p99_ms": percentile(samples, 0.99),
        "samples": len(samples),
    }


def _api_load(stack: Stack, probe: Probe, config: BenchConfig) -> dict[str, float]:
    samples: list[float] = []
    ids: list[str] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(base_url=stack.api_url, timeout=config.timeout) as client:
            for _ in range(config.api_requests_per_client):
                started = time.perf_counter()
                reply = client.post("/v1/workflows/bench-one/execute", json={})
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    samples.append(elapsed)
                    ids.append(reply.json()["execution_id"])

    threads = [threading.Thread(target=client_loop) for _ in range(config.api_clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    _wait_all_closed(probe, ids, config.timeout)
    return {
        "clients": config.api_clients,
        "requests": len(samples),
        "requests_per_s": len(samples) / elapsed,
        "p50_ms": percentile(samples, 0.50),
        "p99_ms": percentile(samples, 0.99),
    }


def _wait_ready(stack: Stack, celery_app: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(stack.api_url + "/readyz", timeout=2).status_code == 200:
                if celery_app.control.ping(timeout=0.5):
                    return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the bench stack did not become ready")
        time.sleep(0.2)


def _preload_events(probe: Probe, count: int) -> None:
    """Fill the history with `count` events of finished executions (1,000 per run)."""
    per_run = 1000
    runs = max(1, count // per_run)
    probe.pg.execute(
        """
        WITH new_runs AS (
            SELECT gen_random_uuid() AS run_id, 'preload-' || g AS execution_id
            FROM generate_series(1, %(runs)s) AS g
        ), ins_exec AS (
            INSERT INTO executions (execution_id, workflow_name, root_execution_id,
                                    current_run_id, first_execution_run_id)
            SELECT execution_id, 'bench-sequential', execution_id, run_id, run_id
            FROM new_runs
        ), ins_runs AS (
            INSERT INTO runs (run_id, execution_id, run_number, workflow_name,
                              root_execution_id, status, start_time, end_time, deadline,
                              random_seed, last_event_id, processed_event_id)
            SELECT run_id, execution_id, 1, 'bench-sequential', execution_id, 'COMPLETED',
                   now(), now(), now(), 1, %(per_run)s, 0
            FROM new_runs
        )
        INSERT INTO events (run_id, event_id, execution_id, event_type, attributes,
                            event_timestamp)
        SELECT run_id, e, execution_id, 'ACTIVITY_TASK_COMPLETED',
               '{"seq": 1, "result": {"type": "json", "value": 1}}'::jsonb, 0
        FROM new_runs, generate_series(1, %(per_run)s) AS e
        """,
        {"runs": runs, "per_run": per_run},
    )
    probe.pg.execute("ANALYZE")


# The headline figures, with their targets where the issues set one.
TARGETS: dict[tuple[str, str], str | None] = {
    ("sequential", "ratio_to_raw_celery"): None,
    ("sequential", "ratio_to_durable_limit"): None,
    ("sequential", "ratio_to_dbos"): "> 1",
    ("sequential", "pg_transactions_per_activity"): "<= 2",
    ("latency", "p50_ms"): "< 30",
    ("latency", "p99_ms"): "< 100",
}
# (path in report["interactions"], target in ms)
INTERACTION_TARGETS: list[tuple[str, str, str]] = [
    ("signal_to_activity_scheduled", "p50_ms", "< 20"),
    ("signal_to_activity_scheduled", "p99_ms", "< 60"),
    ("query", "p50_ms", "< 15"),
    ("update_round_trip", "p50_ms", "< 40"),
    ("cancel_to_closed", "p99_ms", "< 1000"),
    ("terminate_to_closed", "p99_ms", "< 1000"),
    ("cancel_to_closed_all_workers_busy", "p99_ms", "< 1000"),
]
CONTENDERS = ("raw_celery", "durable_limit", "sequential", "fan_out", "dbos")


def format_report(report: dict[str, Any]) -> str:
    lines = [
        "contender     exec/s (min-max)          activities/s   ratio   pg tx/act  msgs/act",
    ]
    measured = [name for name in CONTENDERS if "skipped" not in report[name]]
    for name in CONTENDERS:
        r = report[name]
        if "skipped" in r:
            lines.append(f"{name:<13} skipped: {r['skipped']}")
            continue
        low, high = r["executions_per_s_min_max"]
        ratio = f"{r['ratio_to_raw_celery']:.2f}" if "ratio_to_raw_celery" in r else "1.00"
        lines.append(
            f"{name:<13} {r['executions_per_s']:>7.1f} ({low:>6.1f}-{high:<6.1f})"
            f"     {r['activities_per_s']:>9.1f}   {ratio:>5}"
            f"   {r['pg_transactions_per_activity']:>8.2f}"
            f"  {r['celery_messages_per_activity']:>8.2f}"
        )
    lines.append("")
    lines.append("CPU seconds per round (median):")
    for name in measured:
        cpu = report[name]["cpu_seconds"]
        lines.append(f"  {name:<11} " + "  ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items())))
    lat, api = report["latency"], report["api"]
    lines.append("")
    lines.append(
        f"latency (one activity, execute -> COMPLETED, {lat['samples']} runs): "
        f"p50 {lat['p50_ms']:.1f} ms  p95 {lat['p95_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms"
    )
    lines.append(
        f"API execute under {api['clients']} clients: p50 {api['p50_ms']:.1f} ms  "
        f"p99 {api['p99_ms']:.1f} ms  ({api['requests_per_s']:.0f} req/s)"
    )
    lines.append("")
    if "sweep_executions_per_s" in report["dbos"]:
        sweep = report["dbos"]["sweep_executions_per_s"]
        lines.append(
            "DBOS worker concurrency sweep (exec/s): "
            + "  ".join(f"{level}: {value:.1f}" for level, value in sweep.items())
            + f"; the rounds ran {report['dbos']['worker_concurrency']}"
        )
        lines.append("")
    lines.append("headline figures:")
    for (section, key), target in TARGETS.items():
        value = report[section].get(key)
        shown = "not measured" if value is None else f"{value:.2f}"
        lines.append(f"  {section}.{key} = {shown}" + (f" (target {target})" if target else ""))
    lines.extend(_format_interactions(report["interactions"]))
    lines.extend(_format_schedules(report["schedules"]))
    lines.extend(_format_streams(report["streams"]))
    lines.extend(_format_runs_listing(report["runs_listing"]))
    return "\n".join(lines)


def _format_streams(found: dict[str, Any]) -> list[str]:
    alone, crowd = found["event_to_frame"], found["event_to_frame_with_all_clients"]
    other = found["other_requests_while_streaming"]
    return [
        "",
        f"event stream on one API process, {found['executions']} executions each time:",
        f"  streams.event_to_frame p50 {alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms"
        " with one client (target p50 < 50)",
        f"  with {found['clients']} clients: p50 {crowd['p50_ms']:.1f} ms,"
        f" p99 {crowd['p99_ms']:.1f} ms ({found['frames_timed']} frames timed);"
        f" other requests meanwhile p50 {other['p50_ms']:.1f} ms, p99 {other['p99_ms']:.1f} ms",
    ]


def _format_runs_listing(found: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"runs API over {found['runs']} runs (pages of {found['page_size']}, ms, HTTP included;"
        " target p99 < 20):",
    ]
    for name, figures in found.items():
        if isinstance(figures, dict):
            lines.append(
                f"  {name:<26} p50 {figures['p50_ms']:>6.1f}  p99 {figures['p99_ms']:>6.1f}"
                f"  ({figures['runs_on_page']} on the page)"
            )
    lines.append(f"  runs_listing.worst_p99_ms = {found['worst_p99_ms']:.1f} (target < 20)")
    return lines


def _format_schedules(found: dict[str, Any]) -> list[str]:
    late = found["lateness"]
    return [
        "",
        f"schedules: {found['schedules']} due every minute at the same second, one beat:",
        f"  started late by p50 {late['p50_ms']:.0f} ms, p99 {late['p99_ms']:.0f} ms,"
        f" max {late['max_ms']:.0f} ms (target p99 < 1000);"
        f" {found['ticks_fired_twice']} tick(s) fired twice",
        f"  beat CPU {found['beat_cpu_percent_of_a_core']:.1f}% of a core over"
        f" {found['window_seconds']:.0f} s (target < 10%)",
    ]


def _format_interactions(found: dict[str, Any]) -> list[str]:
    lines = ["", "talking to live executions (ms):"]
    for name, key, target in INTERACTION_TARGETS:
        lines.append(f"  {name}.{key} = {found[name][key]:.1f} (target {target})")
    timers = found["timers"]
    lines.append(
        f"  timers: {timers['executions']} due at once, fired late by p50"
        f" {timers['fired_late']['p50_ms']:.0f} ms, p99 {timers['fired_late']['p99_ms']:.0f} ms"
        " (target p99 < 1000)"
    )
    lines.append(f"  (the query ran on a history of {found['query']['history_events']} events)")
    return lines


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2))
