"""The console application: FastAPI with the API under ``/api`` (OpenAPI at
``/api/openapi.json``), the pages, and what guards both.

Guarding, in order, on every request: the session cookie (signed, HttpOnly, SameSite=Strict,
Secure under HTTPS, ``web.session_max_age_seconds``) gives the request its CSRF token; the
signed-in user comes from the session, which must be alive server-side (``db.console_sessions``:
signing out, a password change, the user's removal, ``web.session_idle_seconds`` unused or
the maximum age end it at once) or from ``web.trusted_user_header`` when the request comes from ``web.trusted_proxies``;
a request without one gets 401 (API) or the sign-in page (pages). Every state-changing route
also depends on :func:`require_csrf`. Pages are sent with ``Cache-Control: no-store`` and a
Content-Security-Policy that allows nothing from elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from typing import Annotated

from fastapi import FastAPI, HTTPException, Path as PathParameter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp

from dicom_node.config import Config
from dicom_node.web.auth import Users, new_csrf_token, same_token, session_secret
from dicom_node.web.console import Console
from dicom_node.web.dicomweb import STOW_PREFIX

__all__ = ["RowId", "StudyUid", "DestinationName", "create_app", "require_csrf", "require_admin", "require_clinician", "user_of", "role_of", "PUBLIC_PATHS"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
#: What answers without a signed-in user: the sign-in page and call, the stylesheet and script.
PUBLIC_PATHS = ("/login", "/api/session", "/static/")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


#: A database row's id in a path: beyond these bounds it cannot exist (a 404, not an overflow).
RowId = Annotated[int, PathParameter(ge=1, le=2**31 - 1)]
#: A Study Instance UID in a path: digits and dots, at most 64 characters.
StudyUid = Annotated[str, PathParameter(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
#: A destination's name in a path, as the config allows it.
DestinationName = Annotated[str, PathParameter(max_length=64)]


def user_of(request: Request) -> str:
    """The signed-in user of a request that passed the guard."""
    user: str = request.state.user
    return user


def role_of(request: Request) -> str | None:
    """The signed-in user's role (viewer, clinician, admin)."""
    return getattr(request.state, "role", None)


def _require(request: Request, action: str, what: str) -> None:
    from dicom_node.web.auth import may

    if not may(role_of(request), action):
        raise HTTPException(403, f"your role ({role_of(request)}) may not {what}")


async def require_admin(request: Request) -> None:
    """An action on the node (replay, bundles, echo ...): the CSRF token and the admin role."""
    await require_csrf(request)
    _require(request, "act", "act on the node: an admin may")


async def require_clinician(request: Request) -> None:
    """Recording a pathology outcome: the CSRF token and the clinician or admin role."""
    await require_csrf(request)
    _require(request, "outcome", "record outcomes: a clinician or an admin may")


def remote_of(request: Request) -> str:
    return request.client.host if request.client else ""


async def require_csrf(request: Request) -> None:
    """A state-changing request carries the session's CSRF token: the ``X-CSRF-Token`` header
    (API) or the ``csrf_token`` form field (pages). 403 otherwise."""
    token: str | UploadFile | None = request.headers.get("x-csrf-token")
    if token is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        token = (await request.form()).get("csrf_token")
    if not same_token(token if isinstance(token, str) else None, request.session.get("csrf")):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


class _Guard(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, config: Config, users: Users, console: Console) -> None:
        super().__init__(app)
        self.config, self.users, self.console = config, users, console

    def _user(self, request: Request) -> tuple[str | None, str | None]:
        """(user, role): a proxy's user has the role the users file gives the name, else admin
        (as before roles); a session's user the file's role."""
        web = self.config.web
        if web.trusted_user_header and request.client and request.client.host in web.trusted_proxies:
            proxied = request.headers.get(web.trusted_user_header, "").strip()[:64]
            if proxied:
                return proxied, self.users.role(proxied) or "admin"
        name = request.session.get("user")
        if isinstance(name, str) and self.users.exists(name):
            return name, self.users.role(name)
        return None, None

    async def _alive(self, request: Request, user: str | None) -> str | None:
        """The session's user, if its server-side session is alive (a proxy's user has none)."""
        if user is None or request.session.get("user") != user:
            return user  # signed in by the trusted proxy's header (or nobody)
        import asyncio

        ended = await asyncio.to_thread(self.console.session_ended, request.session.get("sid"), user, self.users)
        if ended is None:
            return user
        request.session.clear()  # signed out, password changed, user removed, idle or expired
        request.session["csrf"] = new_csrf_token()
        return None

    def _sender(self, request: Request) -> str | None:
        """A STOW-RS request's sending system: its bearer token's name, or the trusted proxy's user."""
        from dicom_node.web.auth import sender_of

        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return sender_of(self.config.stow_senders_path, token.strip())
        web = self.config.web
        if web.trusted_user_header and request.client and request.client.host in web.trusted_proxies:
            return request.headers.get(web.trusted_user_header, "").strip()[:64] or None
        return None

    async def _stow_guard(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """/dicomweb/: closed unless [web] stow_enabled; a sender's token or the proxy, never a
        session cookie (a cookie would let any page the browser opens post instances)."""
        import asyncio

        if not self.config.web.stow_enabled:
            return JSONResponse({"detail": "STOW-RS is not enabled on this node ([web] stow_enabled)"}, status_code=404)
        sender = await asyncio.to_thread(self._sender, request)
        if sender is None:
            log.warning("STOW-RS from %s refused: no valid sender token", remote_of(request))
            return JSONResponse({"detail": "a sender's token is needed (Authorization: Bearer; egfr-node web add-sender)"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="egfr-node STOW-RS"'})
        request.state.sender = sender
        return await call_next(request)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith(STOW_PREFIX):
            response = await self._stow_guard(request, call_next)
            for header, value in SECURITY_HEADERS.items():
                response.headers.setdefault(header, value)
            return response
        if "csrf" not in request.session:
            request.session["csrf"] = new_csrf_token()
        user, role = self._user(request)
        user = await self._alive(request, user)
        request.state.user, request.state.role = user, (role if user else None)
        path = request.url.path
        if user is None and not any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS):
            if path.startswith("/api/"):
                response = JSONResponse({"detail": "sign in first (POST /api/session)"}, status_code=401)
            else:
                target = path + (f"?{request.url.query}" if request.url.query else "")
                response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # a bug or an outage: one line in the log, a 500 that says what failed
                log.error("console: %s %s failed: %s: %s", request.method, request.url.path[:120], type(exc).__name__,
                          str(exc).splitlines()[0][:200] if str(exc) else "")
                response = JSONResponse({"detail": f"the console failed: {type(exc).__name__}"}, status_code=500)
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        return response


def create_app(console: Console) -> FastAPI:
    """The console for ``console``'s node: API, pages, static files and the guard."""
    from dicom_node.web import api, dicomweb, pages

    config = console.config
    users = Users(config.web_users_path)
    users.names()  # a users file that cannot be read stops the console here, naming the line
    app = FastAPI(title="egfr-node console API", version="1",
                  description="The admin API of an egfr-node DICOM node: queue, jobs, studies, model bundles, "
                              "destinations, health and audit. Sign in with POST /api/session; every POST "
                              "carries the session's CSRF token in X-CSRF-Token.",
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.console, app.state.users = console, users
    app.include_router(api.router)
    app.include_router(dicomweb.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(_Guard, config=config, users=users, console=console)
    app.add_middleware(SessionMiddleware, secret_key=session_secret(config.storage.data_path),
                       session_cookie="egfr_console", max_age=config.web.session_max_age_seconds,
                       same_site="strict", https_only=bool(config.web.certificate))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """A path naming what cannot exist is 404; another bad value 422; one line, no traceback."""
        errors = exc.errors()
        in_path = [e for e in errors if e.get("loc", ("",))[0] == "path"]
        status = 404 if in_path else 422
        where = in_path or errors
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                           for e in where[:3])
        detail = ("not found: " if in_path else "invalid request: ") + detail
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": detail}, status_code=status)
        return pages.error_page(request, status, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        return pages.error_page(request, exc.status_code, str(exc.detail))

    return app
