"""Starting Chainline's own commands (`chainline`, `celery`) as processes."""

from __future__ import annotations

import os
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
