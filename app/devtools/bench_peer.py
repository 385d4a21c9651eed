"""The DBOS Transact peer of `chainline bench`: the same S no-op steps in sequence.

C worker processes (`python -m app.devtools.bench_peer worker ...`) each run DBOS on one
queue, as Celery's prefork pool runs C processes, each taking up to `worker_concurrency`
workflows at once (DBOS runs them on threads); the bench sweeps that setting and keeps
DBOS's best. The bench process enqueues from outside with a `DBOSClient`. Needs the
`bench` extra (`dbos`).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dbos import DBOS, DBOSClient, EnqueueOptions

APPLICATION_NAME = "chainline-bench"
QUEUE_NAME = "chainline-bench"
WORKFLOW_NAME = "bench-sequential"
# How often each worker looks for queued workflows. DBOS's default of 1 s would cap a
# worker at one workflow a second; on 2 cores, shorter intervals than 10 ms gained DBOS
# only a few percent of throughput, for more CPU spent polling.
QUEUE_POLLING_INTERVAL = 0.01
ENDED_STATUSES = ("SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED")


@DBOS.step()
def noop(step: int) -> int:
    return step


@DBOS.workflow(name=WORKFLOW_NAME)
def bench_sequential(steps: int) -> int:
    for step in range(steps):
        noop(step)
    return steps


@dataclass
class DbosPeer:
    """Running DBOS workers and the client that feeds them one round at a time."""

    client: DBOSClient
    executions: int
    steps: int
    timeout: float
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    def run_round(self) -> None:
        """Enqueue N workflows, then wait until every one of them has succeeded."""
        options: EnqueueOptions = {"workflow_name": WORKFLOW_NAME, "queue_name": QUEUE_NAME}
        self.resume()
        try:
            ids = [
                self.client.enqueue(options, self.steps).workflow_id for _ in range(self.executions)
            ]
            self._wait_all_succeeded(ids)
        finally:
            self.pause()

    def pause(self) -> None:
        """Stop the worker processes until `resume`."""
        # Idle, each worker still polls Postgres every QUEUE_POLLING_INTERVAL: left
        # running, they would take CPU from the contenders measured between DBOS rounds.
        for worker in self.workers:
            worker.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for worker in self.workers:
            worker.send_signal(signal.SIGCONT)

    def _wait_all_succeeded(self, workflow_ids: list[str]) -> None:
        pending = set(workflow_ids)
        deadline = time.monotonic() + self.timeout
        while True:
            # Only the workflows that ended since the last look come back.
            ended = self.client.list_workflows(
                workflow_ids=list(pending),
                status=list(ENDED_STATUSES),
                load_input=False,
                load_output=False,
            )
            failed = [s.workflow_id for s in ended if s.status != "SUCCESS"]
            if failed:
                raise RuntimeError(f"{len(failed)} DBOS bench workflows failed, e.g. {failed[0]}")
            pending -= {s.workflow_id for s in ended}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(pending)}/{len(workflow_ids)} DBOS bench workflows"
                    f" did not finish within {self.timeout}s"
                )
            time.sleep(0.005)


@contextmanager
def dbos_peer(
    database_url: str,
    *,
    workers: int,
    executions: int,
    steps: int,
    timeout: float,
    work_dir: Path,
    worker_concurrency: int = 1,
) -> Iterator[DbosPeer]:
    """Start `workers` DBOS worker processes on the empty database `database_url`, each
    running up to `worker_concurrency` workflows at once."""
    # Migrated once here, so the workers do not race to create the same schema.
    DBOS.migrate(database_url)
    client = DBOSClient(system_database_url=database_url, application_name=APPLICATION_NAME)
    peer = DbosPeer(client=client, executions=executions, steps=steps, timeout=timeout)
    try:
        client.register_queue(
            QUEUE_NAME,
            worker_concurrency=worker_concurrency,
            polling_interval_sec=QUEUE_POLLING_INTERVAL,
            application_name=APPLICATION_NAME,
        )
        for index in range(workers):
            peer.workers.append(_start_worker(database_url, index, work_dir))
        _wait_ready(peer.workers, work_dir, timeout)
        peer.pause()
        yield peer
    finally:
        peer.resume()
        _stop_workers(peer.workers)
        client.destroy()


def _start_worker(database_url: str, index: int, work_dir: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "app.devtools.bench_peer",
        "worker",
        f"--database-url={database_url}",
        f"--executor-id=dbos-bench-{index}",
        f"--ready-file={_ready_file(work_dir, index)}",
    ]
    with (work_dir / f"dbos-worker-{index}.log").open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _ready_file(work_dir: Path, index: int) -> Path:
    return work_dir / f"dbos-worker-{index}.ready"


def _wait_ready(workers: list[subprocess.Popen[bytes]], work_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for index, worker in enumerate(workers):
        while not _ready_file(work_dir, index).exists():
            if worker.poll() is not None:
                log = work_dir / f"dbos-worker-{index}.log"
                raise RuntimeError(f"DBOS worker {index} exited early; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"DBOS worker {index} did not start within {timeout}s")
            time.sleep(0.05)


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def run_worker(database_url: str, executor_id: str, ready_file: Path) -> None:
    """Serve the bench queue until SIGTERM or SIGINT."""
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before DBOS starts its threads, which inherit the mask: the signal then
    # waits for sigwait below instead of landing on a thread that cannot act on it.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    DBOS(
        config={
            "name": APPLICATION_NAME,
            "system_database_url": database_url,
            "executor_id": executor_id,
            "run_migrations": False,
            # A worker paused between rounds may be inside a poll's transaction.
            "sys_db_idle_transaction_timeout_sec": 0,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        ready_file.touch()
        signal.sigwait(stop_signals)
    finally:
        DBOS.destroy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.devtools.bench_peer")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run one DBOS worker process of the bench")
    worker.add_argument("--database-url", required=True)
    worker.add_argument("--executor-id", required=True)
    worker.add_argument("--ready-file", required=True, type=Path)
    args = parser.parse_args(argv)
    run_worker(args.database_url, args.executor_id, args.ready_file)


if __name__ == "__main__":
    main()
