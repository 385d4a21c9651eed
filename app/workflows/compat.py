"""Mistral's keywords that Chainline accepts but does not act on yet.

A workflow file written for Mistral's SDK must import unchanged (after its one import
line), so `define` and `activity` take every keyword Mistral's take, in Mistral's order.
Where a keyword would change nothing here, the user is told, once per keyword.
"""

from __future__ import annotations

import warnings


class NoEffectWarning(UserWarning):
    """A Mistral keyword was given that Chainline does not act on (yet)."""


_warned: set[str] = set()


def no_effect(keyword: str, why: str) -> None:
    if keyword in _warned:
        return
    _warned.add(keyword)
    warnings.warn(f"{keyword}: {why}", NoEffectWarning, stacklevel=4)
