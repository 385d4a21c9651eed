"""Starting Chainline's own commands (`chainline`, `celery`) as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence


def scripts_dir() -> str:
    """Where this installation's console scripts are: `.venv/bin` in a virtualenv."""
    return sysconfig.get_path("scripts")


def with_scripts_on_path(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this installation's scripts first on PATH.

    A newcomer runs `.venv/bin/chainline dev` without activating the virtualenv; the
    `chainline` and `celery` it starts must still be the ones installed beside it.
    """
    path = [scripts_dir(), *(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p)]
    return {**env, "PATH": os.pathsep.join(dict.fromkeys(path))}


def with_current_folder_importable(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the current folder first on PYTHONPATH.

    A workflow module beside the user (`CHAINLINE_WORKFLOWS=shop_flows`, in `shop_flows.py`
    here) must import in every process Chainline starts, whatever folder they run in.
    """
    current = os.getcwd()
    kept = (p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
    return {**env, "PYTHONPATH": os.pathsep.join(dict.fromkeys([current, *kept]))}


def make_current_folder_importable() -> None:
    """This process's side of `with_current_folder_importable`.

    A console script's `sys.path` starts with the script's folder, not the current one
    as `python -m` would; uvicorn imports the API (and the workflows) from here.
    """
    current = os.getcwd()
    if current not in sys.path:
        sys.path.insert(0, current)


# Signals passed on to the processes `run_together` runs (a SIGINT as a SIGTERM: a
# second SIGINT would make a Celery worker stop cold).
FORWARDED = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGTERM,
    signal.SIGHUP: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGQUIT,
}
STOP_SECONDS = 30.0


def run_together(commands: Sequence[Sequence[str]], env: Mapping[str, str]) -> int:
    """Run the commands as one: in this process group (a signal to the group reaches all
    of them, SIGKILL included), with the signals this process gets passed on. When one
    ends, the others are stopped; returns the first one's exit code."""
    children = [subprocess.Popen(list(command), env=dict(env)) for command in commands]

    def forward(signum: int, _: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(FORWARDED[signal.Signals(signum)])

    for received in FORWARDED:
        signal.signal(received, forward)
    first = _first_to_end(children)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return first


def _first_to_end(children: list[subprocess.Popen[bytes]]) -> int:
    while True:
        for child in children:
            code = child.poll()
            if code is not None:
                return code
        try:
            # Until a child ends, left unreaped (WNOWAIT) for poll() to read its code.
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
