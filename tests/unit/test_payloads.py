"""Payload encoding: what Postgres cannot store is refused before any write."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from app.errors import InvalidPayload, PayloadTooLarge
from app.model.payloads import digest, encode, storable_text


class Point(BaseModel):
    x: int
    at: datetime


def test_pydantic_values_become_json() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    assert encode({"p": Point(x=1, at=at), "t": (1, 2)}, "input") == {
        "p": {"x": 1, "at": "2026-01-02T00:00:00Z"},
        "t": [1, 2],
    }


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.nan, "NaN or an infinity"),
        ({"a": [math.inf]}, "NaN or an infinity"),
        (-math.inf, "NaN or an infinity"),
        ("a\u0000b", "NUL"),
        ({"key\u0000": 1}, "NUL"),
        (["\ud800"], "unpaired surrogate"),
        (object(), "cannot be encoded as JSON"),
    ],
)
def test_what_jsonb_cannot_hold_is_refused_naming_the_payload(value: object, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=reason) as raised:
        encode(value, "the result of activity 'x'")
    assert "the result of activity 'x'" in raised.value.detail


def test_an_escaped_nul_is_text_not_a_nul() -> None:
    # A backslash followed by u0000 is four ordinary characters.
    assert encode("\\u0000", "input") == "\\u0000"


def test_the_size_limit_is_on_the_compact_json() -> None:
    assert encode("x" * 8, "input", limit=10) == "x" * 8  # "xxxxxxxx" is 10 bytes
    with pytest.raises(PayloadTooLarge, match="11 bytes; the limit is 10"):
        encode("x" * 9, "input", limit=10)


def test_failure_text_is_mended_and_cut_instead() -> None:
    assert storable_text("a\u0000b\ud800c") == "a\ufffdb?c"
    cut = storable_text("é" * 100, limit=11)
    assert len(cut.encode()) <= 11 and cut.endswith("...")


def test_a_digest_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
