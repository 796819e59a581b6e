"""The dashboard's routes: pages, static assets, login/logout, the event feed, CSV export.

Pages are static HTML whose scripts call the cloud API itself (``/devices``, ``/results``,
``/commands``, ...) with the session cookie and the CSRF token from ``/dashboard/session``.
Every route here but the login form and its style sheet needs a session: the gate in
:mod:`cloud_sync.dashboard.auth`, run by the API's middleware, refuses the rest.
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from starlette.responses import Response

from cloud_sync.dashboard.auth import COOKIE, PREFIX, current_session, sessions_of
from cloud_sync.dashboard.events import Feed
from cloud_sync.errors import NotFound, Unauthorized
from cloud_sync.store import ResultQuery

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES = {"": "fleet.html", "devices": "device.html", "models": "models.html", "results": "results.html"}
PAGES["rollouts"] = "rollouts.html"
ASSETS = {"style.css": "text/css", "common.js": "text/javascript", "fleet.js": "text/javascript"}
ASSETS |= {f"{page}.js": "text/javascript" for page in ("device", "models", "results", "rollouts")}
FAILED_LOGIN_DELAY_S = 0.5
CSV_MAX_ROWS = 100_000
CSV_COLUMNS = ("id", "device", "model", "version", "label", "created", "received", "source", "ref", "body")
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix=PREFIX, tags=["dashboard"], include_in_schema=False)


def _feed(request: Request) -> Feed:
    feed: Feed = request.app.state.feed
    return feed


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / PAGES[name], media_type="text/html", headers=NO_STORE)


# -- pages ---------------------------------------------------------------------------------------
@router.get("/")
def fleet_page() -> FileResponse:
    return _page("")


@router.get("/devices/{device_id}")
def device_page(device_id: str) -> FileResponse:
    return _page("devices")


@router.get("/models")
def models_page() -> FileResponse:
    return _page("models")


@router.get("/results")
def results_page() -> FileResponse:
    return _page("results")


@router.get("/rollouts")
def rollouts_page() -> FileResponse:
    return _page("rollouts")


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_STORE)


# -- login ---------------------------------------------------------------------------------------
LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in - edge fleet</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/dashboard/static/style.css"></head>
<body class="login"><main><h1>Edge fleet</h1>{message}
<form method="post" action="/dashboard/login">
<label>User <input name="user" autocomplete="username" autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<p class="or">or</p>
<label>API token <input name="token" type="password" autocomplete="off"></label>
<button type="submit">Log in</button></form></main></body></html>
"""


def _login_page(message: str = "", status: int = 200) -> HTMLResponse:
    text = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(LOGIN_HTML.format(message=text), status_code=status, headers=NO_STORE)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    if not sessions_of(request).enabled:
        return _login_page(
            "No login is configured: set dashboard_user and dashboard_password_hash "
            "(or api_token) in the cloud config, then restart the API."
        )
    return _login_page()


@router.post("/login", response_model=None)
async def login(
    request: Request,
    user: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    token: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    origin = request.headers.get("origin")
    if origin is not None and origin != str(request.base_url).rstrip("/"):
        return _login_page("Log in from this server's own page.", 403)
    sessions = sessions_of(request)
    who = sessions.login(user, password, token)
    if who is None:
        logger.warning("dashboard: failed login (user %r)", user[:64])
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return _login_page("Wrong user name, password or token.", 401)
    cookie, _ = sessions.issue(who)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    sessions.set_cookie(response, cookie, request)
    logger.info("dashboard: %s logged in", who)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/session")
def session_info(request: Request) -> dict[str, Any]:
    """Who is logged in and the CSRF token the pages send back on POST."""
    session = current_session(request)
    if session is None:  # a bearer-token client: no cookie, so no CSRF token needed
        raise Unauthorized("no dashboard session: log in at /dashboard/login")
    return {
        "user": session.user,
        "expires": session.expires,
        "csrf_token": session.csrf_token(sessions_of(request).key),
    }


# -- live feed and export --------------------------------------------------------------------------
@router.get("/events")
def events(request: Request) -> StreamingResponse:
    """Server-sent events: ``event: fleet`` with the whole fleet snapshot whenever it changes."""
    return StreamingResponse(
        _feed(request).stream(),
        media_type="text/event-stream",
        headers=NO_STORE | {"X-Accel-Buffering": "no"},
    )


@router.get("/results.csv")
def results_csv(
    request: Request,
    device: str | None = None,
    model: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: Annotated[int, Query(ge=1, le=CSV_MAX_ROWS)] = 10_000,
) -> StreamingResponse:
    store = _feed(request).store

    def rows() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        cursor, left = None, limit
        while left > 0:
            page = store.results(
                ResultQuery(device, model, None, since, until, min(left, 1000), cursor=cursor)
            )
            for r in page.items:
                writer.writerow([json.dumps(r[c]) if c == "body" else r[c] for c in CSV_COLUMNS])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            left -= len(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor

    return StreamingResponse(
        rows(),
        media_type="text/csv",
        headers=NO_STORE | {"Content-Disposition": 'attachment; filename="results.csv"'},
    )
