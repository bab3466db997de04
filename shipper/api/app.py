"""The API's ASGI application: every part's routes (``routes(topology)`` of each module) in one
starlette app over the running topology, behind the bearer token check when ``[api] token`` is
set (``BearerAuth``)."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from shipper.api import chains, health, metrics, reload, status, tap

if TYPE_CHECKING:
    from shipper.config import ApiConfig
    from shipper.topology import Topology

#: Paths served without a token: a liveness probe says nothing about the daemon's state.
OPEN_PATHS = frozenset({"/health/live"})


class BearerAuth:
    """Every request but those for ``OPEN_PATHS`` must carry ``Authorization: Bearer <token>``;
    401 otherwise. The token is compared in constant time (as digests, so that not even its
    length shows)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    def allows(self, header: bytes | None) -> bool:
        """Whether an ``Authorization`` header's value carries the token."""
        scheme, _, given = (header or b"").partition(b" ")
        digest = hashlib.sha256(given.strip()).digest()
        return hmac.compare_digest(digest, self._digest) and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        refused = JSONResponse(
            {"error": "a bearer token is required (Authorization: Bearer <token>)"},
            401,
            headers={"WWW-Authenticate": 'Bearer realm="shipper"'},
        )
        await refused(scope, receive, send)


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
