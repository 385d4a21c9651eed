"""Payloads (inputs, results, failure messages) as JSON that Postgres will store.

Every payload Chainline records goes through `encode`: pydantic turns the value into
JSON types, then what JSONB cannot hold is refused before anything is written: NaN and
the infinities (not JSON), the NUL character and unpaired surrogates (not storable as
Postgres text), and anything larger than the limit (2 MB by default, as in Mistral).
Failure messages come from exceptions, which cannot be refused: `storable_text` mends
and truncates them instead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from app.errors import InvalidPayload, PayloadTooLarge
from app.settings import get_settings


def encode(value: Any, what: str, *, limit: int | None = None) -> Any:
    """`value` as JSON types, checked storable and within the size limit.

    Raises InvalidPayload (saying why, and naming `what`) or PayloadTooLarge.
    """
    try:
        data = to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidPayload(f"{what} cannot be encoded as JSON: {exc}") from None
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        raise InvalidPayload(f"{what} holds NaN or an infinity, which JSON cannot") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidPayload(
            f"{what} holds an unpaired surrogate, which Postgres cannot store"
        ) from None
    # json.dumps writes NUL as the escape \u0000: look closer only when that appears.
    if "\\u0000" in text and _holds_nul(data):
        raise InvalidPayload(f"{what} holds a NUL character, which Postgres cannot store")
    limit = get_settings().max_payload_bytes if limit is None else limit
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} bytes")
    return data


def _holds_nul(data: Any) -> bool:
    if isinstance(data, str):
        return "\x00" in data
    if isinstance(data, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in data.items())
    if isinstance(data, list):
        return any(_holds_nul(item) for item in data)
    return False


def storable_text(text: str, *, limit: int | None = None) -> str:
    """`text` with what Postgres cannot store replaced, cut to the payload limit."""
    limit = get_settings().max_payload_bytes if limit is None else limit
    mended = text.replace("\x00", "\ufffd").encode("utf-8", "replace")
    if len(mended) > limit:
        mended = mended[: max(0, limit - 3)] + b"..."
    return mended.decode("utf-8", "ignore")


def digest(data: Any) -> str:
    """A short fingerprint of JSON data, the same for equal data whatever its key order."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()[:32]
