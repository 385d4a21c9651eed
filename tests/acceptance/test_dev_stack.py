"""`chainline dev`, as a newcomer runs it: embedded servers, or the system ones by URL."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from app.devtools.devstack import free_port
from tests.support import (
    BROKER_URL,
    CHAINLINE,
    create_database,
    delete_broker_keys,
    drop_database,
    newcomer_env,
    wait_until,
)

HELLO = ("run", "hello-world", "--input", '{"name": "World"}', "--wait")


def _clean_env(**overrides: str) -> dict[str, str]:
    return {**newcomer_env(), **overrides}


class DevProcess:
    def __init__(self, data_dir: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.flower_port = free_port()
        self.env = env
        self.log_path = data_dir.parent / f"dev-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    CHAINLINE,
                    "dev",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(self.port),
                    "--flower-port",
                    str(self.flower_port),
                ],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> float:
        match = wait_until(
            lambda: re.search(r"Chainline is ready \(([\d.]+)s\)", self.log),
            timeout=120,
            what=f"chainline dev to be ready (log: {self.log_path})",
        )
        return float(match.group(1))

    def chainline(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHAINLINE, "--base-url", self.base_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
        )

    def processes(self) -> list[psutil.Process]:
        """The dev process, its children, and the servers it started for this data dir."""
        root = psutil.Process(self.process.pid)
        found = {root.pid: root, **{p.pid: p for p in root.children(recursive=True)}}
        marker = str(self.data_dir.resolve())
        for process in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in process.info["cmdline"] or []):
                found[process.pid] = process
        return list(found.values())

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


@contextmanager
def running_dev(
    data_dir: Path, env: dict[str, str], cwd: Path | None = None
) -> Iterator[DevProcess]:
    dev = DevProcess(data_dir, env, cwd)
    try:
        yield dev
    finally:
        if dev.process.poll() is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
            dev.process.wait(timeout=10)


def dev_refused(
    data_dir: Path, env: dict[str, str], *options: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A `chainline dev` expected to refuse to start (on a fresh port unless told)."""
    if "--port" not in options:
        options = ("--port", str(free_port()), *options)
    return subprocess.run(
        [CHAINLINE, "dev", "--data-dir", str(data_dir), *options],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def _all_gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_dev_on_embedded_servers_runs_hello_world_and_stops_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_dev(data_dir, _clean_env()) as dev:
        seconds = dev.wait_ready()
        print(f"chainline dev (embedded, first start) ready in {seconds:.1f}s")
        assert f"data       {data_dir.resolve()}" in dev.log
        assert f"host={data_dir.resolve()}" in dev.log  # Postgres on a socket in our folder
        assert "broker     redis://127.0.0.1:6379" not in dev.log
        hello = dev.chainline(*HELLO, "--id", "hello-1")
        assert hello.returncode == 0, hello.stderr
        assert json.loads(hello.stdout) == {"message": "Hello, World!"}

        user, _, password = (data_dir / "flower-credentials").read_text().partition(":")
        flower = f"http://127.0.0.1:{dev.flower_port}"
        wait_until(lambda: _status(flower + "/healthcheck") == 200, what="flower")
        assert _status(flower + "/api/workers") == 401

        def finished_activity() -> bool:
            tasks = httpx.get(flower + "/api/tasks", auth=(user, password), timeout=5).json()
            return any(
                t["name"] == "activity.make_greeting" and t["state"] == "SUCCESS"
                for t in tasks.values()
            )

        wait_until(finished_activity, timeout=30, what="flower to list the activity task")

        def workers_shown() -> bool:
            # Flower asks the workers afresh and lists those that answer within its
            # inspect timeout (1 s): a busy worker can miss one round.
            workers = httpx.get(
                flower + "/api/workers?refresh=1", auth=(user, password), timeout=10
            ).json()
            return bool(workers)

        wait_until(workers_shown, timeout=30, what="flower to show the worker")

        second = dev_refused(data_dir, dev.env)
        assert second.returncode != 0
        assert f"{data_dir.resolve()} is in use by processes still holding its lock" in (
            second.stderr
        )
        assert f"pid {dev.process.pid} (" in second.stderr

        processes = dev.processes()
        assert len(processes) >= 6  # dev, 4 Procfile processes, Postgres, Redis ...
        # The terminal closing: SIGHUP to the dev process and the relays it forked.
        os.killpg(dev.process.pid, signal.SIGHUP)
        dev.process.wait(timeout=30)
        wait_until(lambda: _all_gone(processes), timeout=15, what="every process to exit")

    # Ports, lock and data all free again: the next `chainline dev` starts as the first.
    with running_dev(data_dir, _clean_env()) as again:
        seconds = again.wait_ready()
        print(f"chainline dev (embedded, restart) ready in {seconds:.1f}s")
        kept = again.chainline("get", "hello-1", "--json")
        assert kept.returncode == 0, kept.stderr
        assert json.loads(kept.stdout)["result"] == {"message": "Hello, World!"}
        processes = again.processes()
        again.stop()
        wait_until(lambda: _all_gone(processes), timeout=15, what="every process to exit")


SHOP_FLOWS = """
from app import workflows


@workflows.activity()
def price_with_tax(cents: int) -> int:
    return cents * 120 // 100


@workflows.workflow.define(name="shop-total")
class ShopTotal:
    @workflows.workflow.entrypoint
    async def run(self, cents: int) -> dict[str, int]:
        return {"total": await price_with_tax(cents)}
"""


def test_dev_uses_the_url_settings_and_workflows_from_the_current_folder(
    tmp_path: Path,
) -> None:
    database_url = create_database()
    prefix = f"chainline-dev-test-{uuid.uuid4().hex[:8]}:"
    project = tmp_path / "shop"
    project.mkdir()
    (project / "shop_flows.py").write_text(SHOP_FLOWS)
    env = _clean_env(
        CHAINLINE_DATABASE_URL=database_url,
        CHAINLINE_BROKER_URL=BROKER_URL,
        CHAINLINE_BROKER_KEY_PREFIX=prefix,
        CHAINLINE_WORKFLOWS="workers.workflows.examples,shop_flows",
    )
    try:
        with running_dev(tmp_path / "data", env, cwd=project) as dev:
            dev.wait_ready()
            assert not (tmp_path / "data" / "postgres").exists()
            assert not (tmp_path / "data" / "redis").exists()
            hello = dev.chainline(*HELLO)
            assert hello.returncode == 0, hello.stderr
            assert json.loads(hello.stdout) == {"message": "Hello, World!"}
            # The module beside the user, loaded by the API and the worker alike.
            shop = dev.chainline("run", "shop-total", "--input", '{"cents": 1000}', "--wait")
            assert shop.returncode == 0, shop.stderr + dev.log
            assert json.loads(shop.stdout) == {"total": 1200}
            processes = dev.processes()
            dev.stop()
            wait_until(lambda: _all_gone(processes), timeout=15, what="every process to exit")
    finally:
        drop_database(database_url)
        delete_broker_keys(prefix)


def test_dev_killed_outright_names_the_processes_still_holding_its_data(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with running_dev(data_dir, _clean_env()) as dev:
        dev.wait_ready()
        processes = dev.processes()
        try:
            os.kill(dev.process.pid, signal.SIGKILL)  # nothing can clean up after this
            dev.process.wait(timeout=10)
            # Its children live on: honcho's relays, forked with the lock open, among them.
            survivors = {p.pid for p in processes if p.is_running()} - {dev.process.pid}
            again = dev_refused(data_dir, dev.env)
            assert again.returncode == 1
            named = [int(pid) for pid in re.findall(r"pid (\d+) \(", again.stderr)]
            assert named, again.stderr
            assert dev.process.pid not in named  # the pid written in the lock is gone
            assert set(named) <= survivors
            assert all("chainline dev" in " ".join(psutil.Process(pid).cmdline()) for pid in named)
        finally:
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.kill()


def test_dev_refuses_busy_ports_and_broken_workflows_before_starting_anything(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for option in ("--port", "--flower-port"):
            other = "--flower-port" if option == "--port" else "--port"
            ports = [option, str(busy), other, str(free_port())]
            refused = dev_refused(data_dir, _clean_env(), *ports)
            assert refused.returncode == 1
            assert refused.stderr == (
                f"Error: port {busy} is already in use: stop what listens there "
                f"or pass {option} with a free one\n"
            )
    env = _clean_env(CHAINLINE_WORKFLOWS="workers.workflows.examples,shop_flows")
    broken = dev_refused(data_dir, env, cwd=tmp_path)
    assert broken.returncode == 1
    assert broken.stderr == (
        "Error: cannot import workflow module 'shop_flows' (CHAINLINE_WORKFLOWS): no module "
        "named 'shop_flows' here; run from the folder that holds it, or add that folder "
        "to PYTHONPATH\n"
    )
    assert not (data_dir / "postgres").exists() and not (data_dir / "redis").exists()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0
