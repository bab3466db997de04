"""The API's ASGI application: every part's routes (``routes(topology)`` of each module) in one
starlette app over the running topology, behind the bearer token check when ``[api] token`` is
set (``BearerAuth``)."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from shipper.api import chains, health, metrics, reload, status, tap

if TYPE_CHECKING:
    from shipper.config import ApiConfig
    from shipper.topology import Topology

#: Paths served without a token: a liveness probe says nothing about the daemon's state; the
#: login form is how a browser gives the token (see ``BearerAuth``).
OPEN_PATHS = frozenset({"/health/live", "/login"})
#: The cookie a browser holds the token in, once given through the login form.
COOKIE = "shipper_token"
#: The most a login form's body may be.
MAX_LOGIN_BYTES = 4096

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shipper: token</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>shipper</h1>
<p>{message}</p>
<form method="post" action="/login">
<label>API token <input type="password" name="token" autofocus></label>
<button type="submit">Open the status page</button>
</form>
</body></html>
"""


class BearerAuth:
    """Every request but those for ``OPEN_PATHS`` must carry the token: ``Authorization: Bearer
    <token>`` (the CLI, Prometheus, scripts), or the cookie ``shipper_token`` (a browser, which
    cannot add a header to the status page's ``EventSource``); 401 otherwise, with a login form
    for a browser asking for a page. ``POST /login`` takes the form (``token=...``) and, when
    it is right, sets the cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS) and
    sends the browser to ``/``. The token is compared in constant time (as digests, so that not
    even its length shows)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    def matches(self, given: bytes) -> bool:
        """Whether ``given`` is the token (in constant time)."""
        return hmac.compare_digest(hashlib.sha256(given.strip()).digest(), self._digest)

    def allows(self, header: bytes | None) -> bool:
        """Whether an ``Authorization`` header's value carries the token."""
        scheme, _, given = (header or b"").partition(b" ")
        return self.matches(given) and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if scope["path"] == "/login":
            await self._login(request, scope, receive, send)
            return
        if scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        cookie = request.cookies.get(COOKIE)
        if self.allows(request.headers.get("authorization", "").encode()) or (
            cookie is not None and self.matches(cookie.encode())
        ):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and "text/html" in request.headers.get("accept", ""):
            refused: Response = HTMLResponse(
                _LOGIN_PAGE.format(message="This API needs its token."), 401, headers=_PAGE
            )
        else:
            refused = JSONResponse(
                {"error": "a bearer token is required (Authorization: Bearer <token>)"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="shipper"'},
            )
        await refused(scope, receive, send)

    async def _login(self, request: Request, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /login``: the form; ``POST /login``: the token checked, the cookie set."""
        response: Response
        if scope["method"] != "POST":
            response = HTMLResponse(
                _LOGIN_PAGE.format(message="This API needs its token."), headers=_PAGE
            )
        else:
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_LOGIN_BYTES:
                    break
            given = parse_qs(body[:MAX_LOGIN_BYTES].decode(errors="replace")).get("token", [""])
            if body and len(body) <= MAX_LOGIN_BYTES and self.matches(given[0].encode()):
                response = RedirectResponse("/", 303)
                response.set_cookie(
                    COOKIE,
                    given[0].strip(),
                    httponly=True,
                    samesite="strict",
                    secure=scope.get("scheme") == "https",
                )
            else:
                response = HTMLResponse(
                    _LOGIN_PAGE.format(message="That is not the token."), 401, headers=_PAGE
                )
        await response(scope, receive, send)


#: Headers of the login form: nothing loaded from anywhere, no script, never cached.
_PAGE = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'",
    "Cache-Control": "no-store",
}


def build_app(topology: Topology, config: ApiConfig) -> Starlette:
    """The application serving ``topology``'s state as ``config`` says."""
    board = status.Board(topology)  # the status summary, refreshed while the app runs
    routes: list[BaseRoute] = [
        *health.routes(topology, config),
        *metrics.routes(topology),
        *chains.routes(topology),
        *tap.routes(topology),
        *status.routes(board),
        *reload.routes(topology),
    ]
    middleware = []
    if config.token is not None:
        middleware.append(Middleware(BearerAuth, token=config.token.reveal()))
    return Starlette(routes=routes, middleware=middleware, lifespan=board.lifespan)
