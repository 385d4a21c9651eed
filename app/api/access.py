"""Who may call the API, and how much they may send, checked before a body is read.

`Guard` is plain ASGI middleware in front of the app: for the API (`/v1`), `/metrics`
and the web page (`/ui`) it checks the caller first (401 without reading the body),
and it reads every request body itself, counting, so that one over the limit is
refused (413) as soon as it passes it, whether its length was declared or it came in
chunks. The app gets the body replayed.

A caller shows a key as a bearer token, or, from a browser, as the session cookie the
web page's login sets: its time of issue and an HMAC of it keyed by the key (never the
key), HttpOnly and SameSite=Strict, honoured for SESSION_SECONDS after its issue.
A change made with the cookie must also carry the `X-Chainline-UI` header, which no
other site's page can send without this server's consent (CORS), so a page elsewhere
cannot act with the cookie. Removing a key from CHAINLINE_API_KEYS ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse
from fastapi.security import HTTPBearer
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import error_response
from app.errors import PayloadTooLarge, Unauthorized
from app.settings import get_settings

# What a request's JSON may add around the payloads it carries (2 MB each at most).
BODY_OVERHEAD_BYTES = 64 * 1024
METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What asks for a key: the API, the metrics and the web page (but its login).
PROTECTED_ROOTS = ("/v1", "/metrics", "/ui")
UI_ROOT = "/ui"
LOGIN_PATH = "/ui/login"
LOGOUT_PATH = "/ui/logout"
SESSION_COOKIE = "chainline_session"
SESSION_SECONDS = 12 * 3600
UI_HEADER = b"x-chainline-ui"
# Documents the scheme in OpenAPI; the check itself is the Guard's.
bearer = HTTPBearer(auto_error=False, description="Any key of CHAINLINE_API_KEYS")


def key_id(token: str) -> str:
    """What is stored and shown of a key (as the caller's user_id): a short hash of it,
    never the key, nor any part of it."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def session_token(key: str, issued_at: int) -> str:
    """A browser session's cookie for `key`: its issue time, and an HMAC of that time
    keyed by the key (which only the server and the key's holder know)."""
    return f"{issued_at}.{_session_mac(key, issued_at)}"


def _session_mac(key: str, issued_at: int) -> str:
    return hmac.new(key.encode(), f"chainline-ui:{issued_at}".encode(), "sha256").hexdigest()


def _session_key(token: str, accepted: frozenset[str]) -> str | None:
    """The accepted key a session cookie was issued for, if it is still in force."""
    issued, _, mac = token.partition(".")
    if not issued.isdigit() or not 0 <= time.time() - int(issued) <= SESSION_SECONDS:
        return None
    for key in accepted:
        if hmac.compare_digest(mac, _session_mac(key, int(issued))):
            return key
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _protected(path: str) -> bool:
    # Signing in and out asks for no key: signing out only clears the cookie.
    if path in (LOGIN_PATH, LOGOUT_PATH):
        return False
    return any(_under(path, root) for root in PROTECTED_ROOTS)


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


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _session(scope: Scope) -> str | None:
    """The session cookie's value, if one was sent (read as browsers write cookies:
    other sites' cookies on this host, however odd, do not hide it)."""
    raw = _header(scope, b"cookie")
    return None if raw is None else cookie_parser(raw.decode("latin-1")).get(SESSION_COOKIE)


def _identify(scope: Scope, accepted: frozenset[str]) -> tuple[str | None, str | None]:
    """Who calls (a key's id, None for nobody) and why they may not (None: they may)."""
    token = _bearer_token(scope)
    if token is not None:
        if accepted and token not in accepted:
            return None, "invalid API key"
        return key_id(token), None
    session = _session(scope)
    key = None if session is None else _session_key(session, accepted)
    if key is not None:
        if scope["method"] not in SAFE_METHODS and _header(scope, UI_HEADER) is None:
            return None, "a change made from a browser session must send X-Chainline-UI"
        return key_id(key), None
    return None, "missing API key" if accepted else None


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        caller, refused = _identify(scope, settings.accepted_api_keys)
        if refused is not None and _protected(scope["path"]):
            await _refusal(scope, refused)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
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


def _refusal(scope: Scope, reason: str) -> ASGIApp:
    """A page of the web UI asked for without a session goes to the login page; anything
    else gets the API's 401."""
    if _under(scope["path"], UI_ROOT) and scope["method"] == "GET":
        query = scope["query_string"].decode("latin-1")
        wanted = scope["path"] + ("?" + query if query else "")
        return RedirectResponse(f"{LOGIN_PATH}?next={quote(wanted, safe='')}", status_code=303)
    refusal = Unauthorized(
        f"{reason}: send one of CHAINLINE_API_KEYS as 'Authorization: Bearer <key>'"
        " (the CLI's --api-key, or CHAINLINE_API_KEY)"
    )
    return error_response(refusal)


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
