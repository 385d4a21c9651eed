"""Turning JSON into typed call arguments and typed return values into JSON, with pydantic.

A workflow entrypoint whose only parameter is a BaseModel takes the input's top-level
keys as that model's fields; otherwise each parameter takes the input key of its name.
Activity calls are recorded as a JSON object of keyword arguments and bound back the
same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError


@cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    # Every replay records every activity call again: built once per function.
    return inspect.signature(fn)


@cache
def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, inspect.Parameter]]:
    hints = get_type_hints(fn)
    params = [
        p
        for p in _signature(fn).parameters.values()
        if p.name not in ("self", "cls")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    return [(p.name, hints.get(p.name, Any), p) for p in params]


def _single_model(fn: Callable[..., Any]) -> tuple[str, type[BaseModel]] | None:
    params = _parameters(fn)
    if len(params) == 1:
        name, annotation, _ = params[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return name, annotation
    return None


@cache
def _keyword_model(fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, annotation, param in _parameters(fn):
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{fn.__qualname__}.input", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def bind_input(fn: Callable[..., Any], payload: Any) -> dict[str, Any]:
    """Validate a JSON input against `fn`'s parameters; return its keyword arguments.

    Raises pydantic's ValidationError, whose `errors()` locate each problem.
    """
    single = _single_model(fn)
    if single is not None:
        name, model = single
        return {name: model.model_validate(payload if payload is not None else {})}
    params = _parameters(fn)
    if payload is None:
        payload = {}
    elif len(params) == 1 and not isinstance(payload, dict):
        # A lone parameter may be given its value directly, as Mistral's SDK allows.
        payload = {params[0][0]: payload}
    if not isinstance(payload, dict):
        raise ValidationError.from_exception_data(
            "input",
            [
                InitErrorDetails(
                    type=PydanticCustomError("dict_type", "Input should be a JSON object"),
                    loc=(),
                    input=payload,
                )
            ],
        )
    validated = _keyword_model(fn).model_validate(payload)
    return {name: getattr(validated, name) for name, _, _ in params}


def call_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A call's arguments in the shape `bind_input` accepts back once encoded as JSON:
    the model itself for a lone BaseModel parameter, else a dict by parameter name.
    Raises TypeError when the arguments do not fit `fn`'s signature."""
    bound = _signature(fn).bind(*args, **kwargs)
    arguments = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
    single = _single_model(fn)
    if single is not None:
        return arguments[single[0]]
    return arguments


@cache
def _return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any]:
    annotation = get_type_hints(fn).get("return", Any)
    return TypeAdapter(Any if annotation is None or annotation is type(None) else annotation)


def result_from_json(fn: Callable[..., Any], payload: Any) -> Any:
    """Rebuild a recorded return value as `fn`'s annotated return type."""
    return _return_adapter(fn).validate_python(payload)
