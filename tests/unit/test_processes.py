"""The PATH and PYTHONPATH Chainline gives the commands it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.processes import scripts_dir, with_current_folder_importable, with_scripts_on_path


def test_scripts_dir_goes_first_and_the_rest_of_path_is_kept_once() -> None:
    env = {"PATH": os.pathsep.join(["/usr/bin", scripts_dir(), "/bin", "/usr/bin"]), "X": "1"}

    path = with_scripts_on_path(env)["PATH"].split(os.pathsep)

    assert path == [scripts_dir(), "/usr/bin", "/bin"]
    assert with_scripts_on_path(env)["X"] == "1"
    assert env["PATH"].startswith("/usr/bin")  # the caller's mapping is left alone


def test_an_environment_without_path_still_finds_the_scripts() -> None:
    assert with_scripts_on_path({})["PATH"].split(os.pathsep)[0] == scripts_dir()


def test_the_current_folder_goes_first_on_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(["/srv/lib", str(tmp_path)])}

    paths = with_current_folder_importable(env)["PYTHONPATH"].split(os.pathsep)

    assert paths == [str(tmp_path), "/srv/lib"]
    assert with_current_folder_importable({})["PYTHONPATH"] == str(tmp_path)


def test_the_lane_is_named_after_its_worker() -> None:
    from app.cli import _lane_name, _names_queues

    assert _lane_name(()) == "celery-workflow-lane@%h"
    assert _lane_name(("-n", "elsewhere@%h")) == "elsewhere-workflow-lane@%h"
    assert _lane_name(("--hostname=w1@box",)) == "w1-workflow-lane@box"
    assert _lane_name(("-nsolo",)) == "solo-workflow-lane@%h"
    assert _names_queues(("-Q", "a")) and _names_queues(("--queues=a",))
    assert not _names_queues(("--concurrency=2",))


def test_processes_run_together_end_together() -> None:
    import sys
    import time

    from app.processes import run_together

    started = time.monotonic()
    quick = [sys.executable, "-c", "raise SystemExit(3)"]
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    # The first to end gives the exit code; the other is stopped, not waited out.
    assert run_together([slow, quick], {"PATH": "/usr/bin:/bin"}) == 3
    assert time.monotonic() - started < 30
