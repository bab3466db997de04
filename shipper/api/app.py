"""The API's ASGI application: every part's routes (``routes(topology)`` of each module) in one
starlette app over the running topology."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shipper.api import health, status

if TYPE_CHECKING:
    from shipper.config import ApiConfig
    from shipper.topology import Topology


def build_app(topology: Topology, config: ApiConfig) -> Starlette:
    """The application serving ``topology``'s state as ``config`` says."""
    board = status.Board(topology)  # the status summary, refreshed while the app runs
    routes: list[BaseRoute] = [*health.routes(topology), *status.routes(board)]
    return Starlette(routes=routes, lifespan=board.lifespan)
