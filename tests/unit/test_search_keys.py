"""Search keys: what is taken from an input, how values are stored, how filters read."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

import pytest

from app.model.search_keys import (
    SearchKeyFilter,
    check_key,
    checked_changes,
    extract,
    merged,
    parse_filter,
)


class Tier(enum.Enum):
    GOLD = "gold"


def test_values_are_taken_at_their_dot_paths_as_text_or_null() -> None:
    given = {
        "customer": {"tier": Tier.GOLD, "since": datetime(2026, 1, 2, tzinfo=UTC)},
        "count": 3,
        "vip": True,
        "coupon": None,
        "items": [1, 2],
    }
    paths = ("customer.tier", "customer.since", "count", "vip", "coupon", "items", "nope.x")
    assert extract(given, paths) == {
        "customer.tier": "gold",
        "customer.since": "2026-01-02T00:00:00+00:00",
        "count": "3",
        "vip": "true",
        "coupon": None,
    }
    assert extract(None, ("a",)) == {}
    assert extract({"a": "x" * 10_000}, ("a",))["a"] == "x" * 8192


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tier:gol", SearchKeyFilter("tier", "similar", "gol")),
        ("tier==:gold", SearchKeyFilter("tier", "exact", "gold")),
        ("tier", SearchKeyFilter("tier", "set")),
        ("coupon==", SearchKeyFilter("coupon", "null")),
        ("note:a:b", SearchKeyFilter("note", "similar", "a:b")),
        ("tier==:", SearchKeyFilter("tier", "exact", "")),
    ],
)
def test_filters_read_as_the_sdk_documents(text: str, expected: SearchKeyFilter) -> None:
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", ["", ":x", "==", "==:x"])
def test_a_filter_without_a_key_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_filter(text)


@pytest.mark.parametrize("key", ["", "a:b", "internal.x", "k" * 257])
def test_keys_mistral_refuses_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)


def test_a_change_is_checked_and_stored_as_text() -> None:
    values, deleted = checked_changes({"tier": Tier.GOLD, "n": 2, "k" * 300: "x"}, ["old"])
    assert values == {"tier": "gold", "n": "2"}
    assert deleted == ["old"]
    with pytest.raises(ValueError):
        checked_changes({f"k{n}": n for n in range(21)}, [])
    with pytest.raises(ValueError):
        checked_changes({"a:b": 1}, [])


def test_a_merge_updates_held_keys_and_adds_new_ones_up_to_twenty() -> None:
    full = {f"k{n}": str(n) for n in range(20)}
    assert merged(full, {"k0": "new", "extra": "x"}, []) == {**full, "k0": "new"}
    assert merged(full, {"extra": "x"}, ["k1"]) == {
        **{k: v for k, v in full.items() if k != "k1"},
        "extra": "x",
    }
    assert merged({"a": "1"}, {}, ["a", "missing"]) == {}
