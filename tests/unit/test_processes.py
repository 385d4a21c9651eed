"""The PATH Chainline gives the commands it starts."""

from __future__ import annotations

import os

from app.processes import scripts_dir, with_scripts_on_path


def test_scripts_dir_goes_first_and_the_rest_of_path_is_kept_once() -> None:
    env = {"PATH": os.pathsep.join(["/usr/bin", scripts_dir(), "/bin", "/usr/bin"]), "X": "1"}

    path = with_scripts_on_path(env)["PATH"].split(os.pathsep)

    assert path == [scripts_dir(), "/usr/bin", "/bin"]
    assert with_scripts_on_path(env)["X"] == "1"
    assert env["PATH"].startswith("/usr/bin")  # the caller's mapping is left alone


def test_an_environment_without_path_still_finds_the_scripts() -> None:
    assert with_scripts_on_path({})["PATH"].split(os.pathsep)[0] == scripts_dir()
