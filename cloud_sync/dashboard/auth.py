"""Dashboard access: password hashes, signed session cookies, CSRF tokens, and the request gate.

A login is the configured ``dashboard_user`` with the password whose scrypt hash is
``dashboard_password_hash``, or the ``api_token`` alone. A successful login sets a session
cookie: ``<payload>.<hmac>``, HttpOnly, SameSite=Strict (Secure over HTTPS, including HTTPS
ended at a proxy listed in ``trusted_proxies``), signed with ``session_secret`` (a random key per
process when unset: sessions then end with the process). A logout ends the session on the server
too: its nonce goes into the database's ``revoked_sessions`` until the cookie would have expired,
so a copy of the cookie is refused from then on. Failed logins are throttled (``throttle.py``).
Every state-changing request made with the cookie must carry the session's CSRF token in the
``X-CSRF-Token`` header; a request with ``Authorization: Bearer <api_token>`` needs none (browsers
never add that header on their own). Make a hash with::

    python -m cloud_sync.dashboard.auth            # prompts for the password, prints the hash
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import secrets
import sys
import time
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cloud_sync.config import CloudConfig
from cloud_sync.store import Store
from edge_agent.access import bearer_ok

COOKIE = "edge_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PREFIX = "/dashboard"
# reachable without a session: the login form and its style sheet
PUBLIC_DASHBOARD_PATHS = frozenset({f"{PREFIX}/login", f"{PREFIX}/static/style.css"})
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


# -- password hashes ---------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash``: what goes into ``dashboard_password_hash``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed hash matches nothing."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# -- sessions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Session:
    user: str
    expires: float
    nonce: str

    def csrf_token(self, key: bytes) -> str:
        return _b64(hmac.new(key, f"csrf:{self.nonce}".encode(), hashlib.sha256).digest())


class Sessions:
    """Issues, checks and revokes signed session cookies for one app."""

    def __init__(self, config: CloudConfig, store: Store) -> None:
        self.config, self.store = config, store
        secret = config.session_secret
        self.key = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        """Whether any login is configured (else the dashboard cannot be entered)."""
        return self.config.dashboard_user is not None or self.config.api_token is not None

    def login(self, user: str, password: str, token: str) -> str | None:
        """The user name the credentials prove, or None."""
        cfg = self.config
        if token and cfg.api_token is not None:
            if hmac.compare_digest(token.encode(), cfg.api_token.get_secret_value().encode()):
                return "token"
            return None
        if cfg.dashboard_user is None or cfg.dashboard_password_hash is None:
            return None
        user_ok = hmac.compare_digest(user.encode(), cfg.dashboard_user.encode())
        password_ok = verify_password(password, cfg.dashboard_password_hash.get_secret_value())
        return cfg.dashboard_user if user_ok and password_ok else None

    def issue(self, user: str) -> tuple[str, Session]:
        session = Session(user, time.time() + self.config.session_max_age_s, secrets.token_urlsafe(16))
        payload = _b64(json.dumps([session.user, session.expires, session.nonce]).encode())
        return f"{payload}.{self._sign(payload)}", session

    def check(self, cookie: str | None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            user, expires, nonce = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return None
        if not isinstance(expires, (int, float)) or expires < time.time():
            return None
        if self.store.session_revoked(str(nonce)):  # logged out
            return None
        return Session(str(user), float(expires), str(nonce))

    def revoke(self, session: Session) -> None:
        """End ``session`` on the server: its cookie is refused from now on, wherever it is."""
        self.store.revoke_session(session.nonce, session.expires)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def set_cookie(self, response: Response, cookie: str, request: Request) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=self.config.session_max_age_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )


def sessions_of(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def current_session(request: Request) -> Session | None:
    return sessions_of(request).check(request.cookies.get(COOKIE))


# -- the gate ----------------------------------------------------------------------------------
def is_public(path: str, public_paths: frozenset[str], public_prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is open without a login (the API's public paths, the login form)."""
    return path in public_paths or path.startswith(public_prefixes) or path in PUBLIC_DASHBOARD_PATHS


async def refuse(
    request: Request, public_paths: frozenset[str], public_prefixes: tuple[str, ...]
) -> Response | None:
    """Why ``request`` may not go on (a response to send instead), or None to let it through.

    Accepted: a public path; the bearer ``api_token``; a valid session cookie (plus the CSRF
    header on state-changing methods). With no login configured at all, the API stays open as
    before, but the dashboard pages are still refused.
    """
    path = request.url.path
    if is_public(path, public_paths, public_prefixes):
        return None
    sessions = sessions_of(request)
    config = sessions.config
    bearer = request.headers.get("authorization", "")
    if config.api_token is not None and bearer:
        if bearer_ok(bearer, config.api_token.get_secret_value()):
            return None
        return _unauthorized("wrong API token: send 'Authorization: Bearer <token>'")
    cookie = request.cookies.get(COOKIE)
    session = await run_in_threadpool(sessions.check, cookie) if cookie else None
    if session is not None:
        if request.method in SAFE_METHODS:
            return None
        given = request.headers.get(CSRF_HEADER, "")
        if given and hmac.compare_digest(given, session.csrf_token(sessions.key)):
            return None
        return JSONResponse(
            {"error": "missing or wrong CSRF token: send the X-CSRF-Token header", "code": "csrf"},
            status_code=403,
        )
    is_dashboard = path == PREFIX or path.startswith(f"{PREFIX}/")
    if not is_dashboard and config.api_token is None and config.dashboard_user is None:
        return None  # no login configured: the API is open on loopback, as before the dashboard
    if is_dashboard and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(f"{PREFIX}/login", status_code=303)
    return _unauthorized("log in at /dashboard/login, or send 'Authorization: Bearer <token>'")


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "code": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def main() -> int:
    """Prompt for a password (twice, or read one line from a pipe) and print its hash."""
    if sys.stdin.isatty():
        password = getpass.getpass("dashboard password: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
