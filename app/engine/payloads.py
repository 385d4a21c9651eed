"""The size cap on JSON payloads (inputs and results), 2 MB by default as in Mistral."""

from __future__ import annotations

import json
from typing import Any

from app.errors import PayloadTooLarge
from app.settings import get_settings


def json_size(value: Any) -> int:
    """The size of `value` as compact JSON, in bytes."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def check_payload_size(value: Any, what: str, limit: int | None = None) -> None:
    """Raise PayloadTooLarge when `value`, as compact JSON, exceeds the limit."""
    limit = get_settings().max_payload_bytes if limit is None else limit
    size = json_size(value)
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} bytes")
