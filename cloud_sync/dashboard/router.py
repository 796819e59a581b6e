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
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from starlette.responses import Response

from cloud_sync.dashboard.auth import PREFIX, current_session, sessions_of
from cloud_sync.dashboard.events import Feed
from cloud_sync.dashboard.throttle import LoginThrottle
from cloud_sync.errors import NotFound, Unauthorized
from cloud_sync.store import ResultQuery
from edge_agent.serving.openapi import Responses, errors, no_content

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
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

HTML: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
# Every dashboard route but the login form and its style sheet needs a session (or the API token):
# without one, a page asked for as HTML redirects to the login form, anything else gets a 401.
PAGE: Responses = {
    200: {"description": "The page", "content": HTML},
    303: no_content("Not logged in: to the login page"),
}
PAGE |= errors(401)
LOGIN_ANSWERS: Responses = {
    303: no_content("Logged in: the session cookie is set; to the fleet page"),
    401: {"description": "Wrong user name, password or token (the form again)", "content": HTML},
    403: {"description": "Posted from another origin (the form again)", "content": HTML},
    429: {"description": "Too many failed logins; retry after Retry-After seconds", "content": HTML},
}

TEXT = {"schema": {"type": "string"}}
ASSET: Responses = {200: {"description": "The asset", "content": {"text/css": TEXT, "text/javascript": TEXT}}}
ASSET |= errors(401, 404)
LOGOUT: Responses = {303: no_content("Logged out: to the login page")}
LOGOUT |= errors(401, 403)
CSV: Responses = {200: {"description": "CSV", "content": {"text/csv": TEXT}}}
CSV |= errors(401)

router = APIRouter(prefix=PREFIX, tags=["dashboard"])


def _feed(request: Request) -> Feed:
    feed: Feed = request.app.state.feed
    return feed


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / PAGES[name], media_type="text/html", headers=NO_STORE)


# -- pages ---------------------------------------------------------------------------------------
@router.get("/", summary="Fleet page", response_class=FileResponse, responses=PAGE)
def fleet_page() -> FileResponse:
    return _page("")


@router.get("/devices/{device_id}", summary="Device page", response_class=FileResponse, responses=PAGE)
def device_page(device_id: str) -> FileResponse:
    return _page("devices")


@router.get("/models", summary="Models page", response_class=FileResponse, responses=PAGE)
def models_page() -> FileResponse:
    return _page("models")


@router.get("/results", summary="Results page", response_class=FileResponse, responses=PAGE)
def results_page() -> FileResponse:
    return _page("results")


@router.get("/rollouts", summary="The rollouts page", response_class=FileResponse, responses=PAGE)
def rollouts_page() -> FileResponse:
    return _page("rollouts")


@router.get(
    "/static/{name}",
    summary="The pages' style sheet and scripts",
    response_class=FileResponse,
    responses=ASSET,
)
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


def _login_page(message: str = "", status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    text = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(
        LOGIN_HTML.format(message=text), status_code=status, headers=NO_STORE | (headers or {})
    )


@router.get("/login", summary="The login form", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    if not sessions_of(request).enabled:
        return _login_page(
            "No login is configured: set dashboard_user and dashboard_password_hash "
            "(or api_token) in the cloud config, then restart the API."
        )
    return _login_page()


@router.post(
    "/login",
    summary="Log in: user and password, or the API token; sets the session cookie",
    response_model=None,
    response_class=HTMLResponse,
    status_code=303,
    responses=LOGIN_ANSWERS,
)
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
    throttle: LoginThrottle = request.app.state.login_throttle
    client = request.client.host if request.client else "unknown"
    account = user if not token else "(api token)"
    wait = throttle.attempt(client, account)
    if wait is not None:
        logger.warning("dashboard: login throttled (client %s, user %r)", client, account[:64])
        return _login_page(f"Too many failed logins: try again in {wait} s.", 429, {"Retry-After": str(wait)})
    who = await run_in_threadpool(sessions.login, user, password, token)  # scrypt: off the event loop
    if who is None:
        logger.warning("dashboard: failed login (client %s, user %r)", client, user[:64])
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return _login_page("Wrong user name, password or token.", 401)
    throttle.succeeded(client, account)
    cookie, _ = sessions.issue(who)
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    sessions.set_cookie(response, cookie, request)
    logger.info("dashboard: %s logged in", who)
    return response


@router.post(
    "/logout",
    summary="Log out: ends the session on the server and clears the cookie",
    response_class=RedirectResponse,
    status_code=303,
    responses=LOGOUT,
)
def logout(request: Request) -> Response:
    session = current_session(request)
    if session is not None:
        sessions_of(request).revoke(session)
        logger.info("dashboard: %s logged out", session.user)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    sessions_of(request).clear_cookie(response, request)
    return response


@router.get("/session", summary="Who is logged in, and the CSRF token", responses=errors(401))
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
@router.get("/events", include_in_schema=False)  # an endless event stream: docs/dashboard.md
def events(request: Request) -> StreamingResponse:
    """Server-sent events: ``event: fleet`` with the whole fleet snapshot whenever it changes."""
    return StreamingResponse(
        _feed(request).stream(),
        media_type="text/event-stream",
        headers=NO_STORE | {"X-Accel-Buffering": "no"},
    )


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading
    apostrophe, which spreadsheets show as text (OWASP's CSV injection advice); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@router.get(
    "/results.csv",
    summary="Results as CSV (cells a spreadsheet would run as formulas are neutralised)",
    response_class=StreamingResponse,
    responses=CSV,
)
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
                writer.writerow([csv_cell(json.dumps(r[c]) if c == "body" else r[c]) for c in CSV_COLUMNS])
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
