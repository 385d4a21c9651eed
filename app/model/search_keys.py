"""Search keys: string metadata of an execution, searchable in the runs API.

A workflow declares dot paths into its input (`workflow.define(search_keys=[...])`),
whose values are taken when an execution starts. Values are stored as strings (enums
by value, dates in ISO 8601) or null, at most MAX_KEYS per execution, as in Mistral's
SDK. Filters (`list_runs(search_key=...)`) follow the SDK's rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any, Literal

MAX_KEYS = 20
MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 8192
RESERVED_PREFIX = "internal."


def check_key(key: str) -> None:
    """Refuse a key Mistral's SDK refuses (ValueError says why)."""
    if not key:
        raise ValueError("a search key cannot be empty")
    if ":" in key:
        raise ValueError(f"search key {key!r} contains ':'")
    if key.startswith(RESERVED_PREFIX):
        raise ValueError(f"search key {key!r} starts with the reserved {RESERVED_PREFIX!r}")
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"search key {key[:40]!r}... is over {MAX_KEY_CHARS} characters")


def checked_changes(
    values: Mapping[str, Any], deleted: Sequence[str]
) -> tuple[dict[str, str | None], list[str]]:
    """What add_search_keys / delete_search_keys were given, as stored: values as text
    or null, keys over MAX_KEY_CHARS left out (as Mistral's server drops them). Raises
    ValueError for what Mistral's SDK refuses: a bad key, or over MAX_KEYS in one call."""
    if len(values) > MAX_KEYS or len(deleted) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} search keys may be sent in one call")
    for key in [*values, *deleted]:
        if not isinstance(key, str):
            raise ValueError(f"a search key is a string, not {key!r}")
        if len(key) <= MAX_KEY_CHARS:
            check_key(key)
    kept = {k: as_text(v) for k, v in values.items() if len(k) <= MAX_KEY_CHARS}
    return kept, [k for k in deleted if len(k) <= MAX_KEY_CHARS]


def merged(
    current: Mapping[str, str | None], values: Mapping[str, str | None], deleted: Sequence[str]
) -> dict[str, str | None]:
    """`current` with `deleted` removed and `values` set: keys it holds are updated, new
    ones added while it holds fewer than MAX_KEYS (the rest are dropped)."""
    result = {k: v for k, v in current.items() if k not in set(deleted)}
    for key, value in values.items():
        if key in result or len(result) < MAX_KEYS:
            result[key] = value
    return result


def as_text(value: Any) -> str | None:
    """A value as stored: None stays null; enums by value, dates in ISO 8601."""
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, datetime | date):
        text = value.isoformat()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return text[:MAX_VALUE_CHARS]


def extract(input_value: Any, paths: tuple[str, ...]) -> dict[str, str | None]:
    """The values at `paths` in an execution's input; a path the input lacks is left
    out (a path to an explicit null is kept, as null)."""
    found: dict[str, str | None] = {}
    for path in paths[:MAX_KEYS]:
        node = input_value
        present = True
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                present = False
                break
        if present and not isinstance(node, dict | list):
            found[path] = as_text(node)
    return found


Match = Literal["similar", "exact", "set", "null"]


@dataclass(frozen=True)
class SearchKeyFilter:
    key: str
    match: Match
    value: str | None = None


def parse_filter(text: str) -> SearchKeyFilter:
    """`key:value` (a similar value: case-insensitive, contained), `key==:value` (the
    exact value), `key` (set at all), `key==` (set to null). ValueError if malformed."""
    key, colon, value = text.partition(":")
    if colon:
        if key.endswith("=="):
            found = SearchKeyFilter(key[:-2], "exact", value)
        else:
            found = SearchKeyFilter(key, "similar", value)
    elif key.endswith("=="):
        found = SearchKeyFilter(key[:-2], "null")
    else:
        found = SearchKeyFilter(key, "set")
    if not found.key:
        raise ValueError(f"{text!r} names no search key")
    return found
