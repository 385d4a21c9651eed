"""The web page for executions, at /ui: a list with filters, and one execution's page
(status, input and result, a live timeline, its runs, and cancel, terminate and
reset). Plain HTML, CSS and JavaScript from the package (ui_files/): no build step, and
nothing fetched from elsewhere at run time. The page calls the same /v1 API as the SDK,
with the session cookie the login sets (app/api/access.py), and follows an execution
live through its SSE stream.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.access import (
    LOGIN_PATH,
    LOGOUT_PATH,
    SESSION_COOKIE,
    SESSION_SECONDS,
    UI_ROOT,
    session_token,
)
from app.settings import get_settings

FILES = Path(__file__).with_name("ui_files")
router = APIRouter(include_in_schema=False)
static_files = StaticFiles(directory=FILES)


@router.get(UI_ROOT)
@router.get(UI_ROOT + "/")
@router.get(UI_ROOT + "/executions/{execution_id}")
def page() -> FileResponse:
    """The page; its script shows the list or an execution by the path."""
    return FileResponse(FILES / "index.html", headers={"Cache-Control": "no-store"})


@router.get(LOGIN_PATH)
def login_page(
    next: Annotated[str, Query(max_length=2000)] = UI_ROOT, failed: bool = False
) -> HTMLResponse:
    template = (FILES / "login.html").read_text()
    notice = '<p class="error">That key is not one of this server\'s.</p>' if failed else ""
    page = template.replace("{{next}}", html.escape(_local(next))).replace("{{notice}}", notice)
    return HTMLResponse(page, status_code=401 if failed else 200)


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = form.get("api_key", [""])[0].strip()
    target = _local(form.get("next", [UI_ROOT])[0])
    accepted = get_settings().accepted_api_keys
    if accepted and key not in accepted:
        again = f"{LOGIN_PATH}?failed=true&next={quote(target, safe='')}"
        return RedirectResponse(again, status_code=303)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_token(key, int(time.time())),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post(LOGOUT_PATH)
def logout() -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


def _local(target: str) -> str:
    """Only a page of this UI is a place to go back to after the login."""
    return target if target.startswith(UI_ROOT) and "//" not in target else UI_ROOT
