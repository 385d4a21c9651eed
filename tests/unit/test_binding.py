from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from app.engine.binding import bind_input, call_arguments, result_from_json
from app.model.payloads import encode


class Order(BaseModel):
    order_id: str
    amount: int


async def takes_model(order: Order) -> Order:
    return order


async def takes_keywords(name: str, count: int = 1) -> str:
    return name * count


async def takes_one_value(name: str) -> str:
    return name


async def takes_nothing() -> None:
    return None


def test_single_model_parameter_takes_the_top_level_keys() -> None:
    bound = bind_input(takes_model, {"order_id": "o-1", "amount": 3})
    assert bound == {"order": Order(order_id="o-1", amount=3)}


def test_single_model_parameter_reports_field_locations() -> None:
    with pytest.raises(ValidationError) as raised:
        bind_input(takes_model, {"order_id": "o-1", "amount": "many"})
    assert [e["loc"] for e in raised.value.errors()] == [("amount",)]


def test_several_parameters_take_keyword_keys_with_defaults() -> None:
    assert bind_input(takes_keywords, {"name": "ab"}) == {"name": "ab", "count": 1}
    assert bind_input(takes_keywords, {"name": "ab", "count": 2}) == {"name": "ab", "count": 2}


def test_unknown_and_missing_keys_are_rejected() -> None:
    with pytest.raises(ValidationError) as raised:
        bind_input(takes_keywords, {"count": 2, "colour": "red"})
    assert {e["loc"] for e in raised.value.errors()} == {("name",), ("colour",)}


def test_a_lone_parameter_may_be_given_directly() -> None:
    assert bind_input(takes_one_value, "plain") == {"name": "plain"}
    assert bind_input(takes_one_value, {"name": "keyed"}) == {"name": "keyed"}


def test_no_parameters_accepts_nothing_or_an_empty_object() -> None:
    assert bind_input(takes_nothing, None) == {}
    assert bind_input(takes_nothing, {}) == {}
    with pytest.raises(ValidationError):
        bind_input(takes_nothing, {"surprise": 1})


def test_non_object_input_for_several_parameters_is_rejected() -> None:
    with pytest.raises(ValidationError):
        bind_input(takes_keywords, [1, 2])


def test_calls_are_recorded_as_the_input_they_bind_back_from() -> None:
    order = Order(order_id="o-2", amount=5)
    recorded = encode(call_arguments(takes_model, (order,), {}), "input")
    assert recorded == {"order_id": "o-2", "amount": 5}
    assert bind_input(takes_model, recorded) == {"order": order}
    recorded = encode(call_arguments(takes_keywords, ("x",), {"count": 3}), "input")
    assert recorded == {"name": "x", "count": 3}
    assert bind_input(takes_keywords, recorded) == {"name": "x", "count": 3}


def test_a_call_that_does_not_fit_the_signature_raises_type_error() -> None:
    with pytest.raises(TypeError):
        call_arguments(takes_keywords, ("x", 3, "one too many"), {})


def test_results_come_back_as_the_annotated_type() -> None:
    assert result_from_json(takes_model, {"order_id": "o", "amount": 1}) == Order(
        order_id="o", amount=1
    )
    assert result_from_json(takes_nothing, None) is None
