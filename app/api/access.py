"""Who may call the API, and how much they may send, checked before a body is read.

`Guard` is plain ASGI middleware in front of the app: for `/v1` paths it checks the
bearer token first (401 without reading the body), and it reads every request body
itself, counting, so that one over the limit is refused (413) as soon as it passes it,
whether its length was declared or it came in chunks. The app gets the body replayed.
"""

from __future__ import annotations

import hashlib

from fastapi import Request
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import error_response
from app.errors import PayloadTooLarge, Unauthorized
from app.settings import get_settings

# What a request's JSON may add around the payloads it carries (2 MB each at most).
BODY_OVERHEAD_BYTES = 64 * 1024
METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH"})
# Documents the scheme in OpenAPI; the check itself is the Guard's.
bearer = HTTPBearer(auto_error=False, description="Any key of CHAINLINE_API_KEYS")


def key_id(token: str) -> str:
    """What is stored and shown of a key (as the caller's user_id): a short hash of it,
    never the key, nor any part of it."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:12]


async def caller(request: Request) -> str | None:
    """The calling key's id (None when the API accepts any caller and none was sent)."""
    found: str | None = request.state.caller
    return found


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.lower().startswith("bearer "):
                return text[7:].strip() or None
    return None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        token = _bearer_token(scope)
        if scope["path"] == "/v1" or scope["path"].startswith("/v1/"):
            accepted = settings.accepted_api_keys
            if accepted and token not in accepted:
                refusal = Unauthorized(
                    "invalid or missing API key: send one of CHAINLINE_API_KEYS as"
                    " 'Authorization: Bearer <key>' (the CLI's --api-key, or CHAINLINE_API_KEY)"
                )
                await error_response(refusal)(scope, receive, send)
                return
        scope.setdefault("state", {})["caller"] = key_id(token) if token else None
        if scope["method"] not in METHODS_WITH_BODIES:
            await self.app(scope, receive, send)
            return
        limit = settings.max_payload_bytes + BODY_OVERHEAD_BYTES
        declared = _declared_length(scope)
        body = b"" if declared is None or declared <= limit else None
        while body is not None:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                body = None
            elif not message.get("more_body", False):
                break
        if body is None:
            too_large = PayloadTooLarge(
                f"the request body is larger than {limit} bytes: each input"
                f" may be CHAINLINE_MAX_PAYLOAD_BYTES ({settings.max_payload_bytes})"
            )
            await error_response(too_large, {"connection": "close"})(scope, receive, send)
            return
        await self.app(scope, _replaying(body, receive), send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body read, once, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
