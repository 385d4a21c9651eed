"""Starting Chainline's own commands (`chainline`, `celery`) as processes."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping


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
