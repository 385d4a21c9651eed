"""Mistral's keywords that Chainline accepts but does not act on yet.

A workflow file written for Mistral's SDK must import unchanged (after its one import
line), so `define` and `activity` take every keyword Mistral's take, in Mistral's order.
Where a keyword would change nothing here, the user is told, once per keyword.
"""

from __future__ import annotations

import sys
import warnings


class NoEffectWarning(UserWarning):
    """A Mistral keyword was given that Chainline does not act on (yet)."""


_warned: set[str] = set()


def no_effect(keyword: str, why: str) -> None:
    if keyword in _warned:
        return
    _warned.add(keyword)
    warnings.warn(f"{keyword}: {why}", NoEffectWarning, stacklevel=_first_frame_outside_sdk())


def _first_frame_outside_sdk() -> int:
    """The stack level of the user's line that gave the keyword, however deep in this
    package the warning is raised."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "app.workflows"
    ):
        level, frame = level + 1, frame.f_back
    return level
