"""Health endpoints: ``/health/live`` answers 200 while the daemon's event loop runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from shipper.topology import Topology


def routes(topology: Topology) -> list[BaseRoute]:
    """The health routes over ``topology``."""

    async def live(request: Request) -> Response:
        """Liveness: the main process answers at all."""
        return JSONResponse({"status": "ok"})

    return [Route("/health/live", live, methods=["GET"])]
