"""Input checked against the parameters of the function it is for (an entrypoint, a
signal, query or update handler), answered as FastAPI's 422 when it does not fit; and
the same 422 for a query or header parameter that FastAPI's types cannot check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.engine.binding import bind_input
from app.errors import InvalidPayload
from app.model.payloads import encode


def validated_input(
    fn: Callable[..., Any], value: Any, at: tuple[str, ...] = ("body", "input")
) -> Any:
    """The input encoded as stored; a 422 naming the field (in the body at `at`) for
    anything else."""
    try:
        encoded = encode(value, "input")
    except InvalidPayload as exc:
        raise RequestValidationError(
            [{"loc": at, "msg": exc.detail, "type": "value_error"}]
        ) from None
    try:
        bind_input(fn, encoded)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": (*at, *error["loc"])}
                for error in exc.errors(include_url=False, include_context=False)
            ]
        ) from None
    return encoded


def invalid_parameter(
    name: str, message: str, given: Any, where: Literal["query", "header"] = "query"
) -> RequestValidationError:
    """FastAPI's 422 for one parameter, raised by the caller."""
    return RequestValidationError(
        [{"loc": (where, name), "msg": message, "type": "value_error", "input": given}]
    )


def refuse_nul(**given: str | list[str] | None) -> None:
    """A NUL names nothing Postgres can store: 422, before any query."""
    for name, value in given.items():
        values = value if isinstance(value, list) else [value]
        if any(v is not None and "\x00" in v for v in values):
            raise invalid_parameter(name, "holds a NUL character", repr(value))
