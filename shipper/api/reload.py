"""``POST /api/reload``: reload the running daemon's config, as SIGHUP does (``Topology.reload``:
the config file read again; sources and sinks added, removed or changed are started, stopped or
restarted; an invalid config changes nothing).

The answer is the reload's result as JSON (``ReloadResult.as_dict``: ``ok``, ``problems``,
``started``, ``stopped``, ``restarted``, ``failed``, ``needs_restart``): 200 when it was
applied (``failed`` may still name a source whose address could not be bound), 422 when the new
config was refused (``problems`` says why, as ``shipper validate`` words it; the old config runs
on), 503 while the daemon is starting or stopping. Reloads run one at a time; a request waits for
the one before it. ``shipper reload`` is the command-line side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shipper.api.chains import json_response

if TYPE_CHECKING:
    from shipper.topology import Topology


def routes(topology: Topology) -> list[BaseRoute]:
    """The reload route over ``topology``."""

    async def reload(request: Request) -> Response:
        if not topology.running:
            return json_response(
                {"ok": False, "problems": ["the daemon is starting or stopping: try again"]}, 503
            )
        result = await topology.reload()
        return json_response(result.as_dict(), 200 if result.ok else 422)

    return [Route("/api/reload", reload, methods=["POST"])]
