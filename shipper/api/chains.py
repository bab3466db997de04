"""``GET /api/chains`` and ``/api/chains/{agent}``: the running daemon's chain state, as
``shipper chain status --json`` prints it (``Verifier.status``: the profile, ``max_agents``,
the counts by status, and per agent its last sequence, open gaps, counts and last alert).

A daemon may track ``[chain] max_agents`` agents (100,000 by default), so ``/api/chains``
answers a page of them, in name order: ``?limit=N`` agents (default and at most ``MAX_LIMIT``)
after the agent named ``?after=NAME``; the answer adds ``total_agents`` and ``next``, the
``after`` of the next page (null on the last). A page is built in the event loop (the state
changes with every batch; a thread would read it mid-change, and would hold the interpreter
anyway): with 100,000 agents tracked, a page of 1,000 takes about 20 to 50 ms (finding the
page's names without sorting them all, the totals over every agent); a larger page would take
the garbage collector's full passes over every agent's state with it (a quarter of a second for
10,000), hence the cap.
``/api/chains/{agent}`` answers that agent alone, or 404 when the daemon has no state for it.

``fetch_status`` is the other side: ``shipper chain status`` asking a running daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from shipper.api.client import Api
    from shipper.topology import Topology

MAX_LIMIT = 1000
DEFAULT_LIMIT = MAX_LIMIT


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def routes(topology: Topology) -> list[BaseRoute]:
    """The chain state routes over ``topology``."""

    async def chains(request: Request) -> Response:
        after = request.query_params.get("after")
        try:
            limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return json_response({"error": f"limit: expected 1 to {MAX_LIMIT}"}, 400)
        return json_response(topology.chain.verifier.status(after=after, limit=limit))

    async def agent(request: Request) -> Response:
        name = request.path_params["agent"]
        status = topology.chain.verifier.status(name)
        if name not in status["agents"]:
            return json_response({"error": f"no chain state for agent {name!r}"}, 404)
        return json_response(status)

    return [
        Route("/api/chains", chains, methods=["GET"]),
        Route("/api/chains/{agent:path}", agent, methods=["GET"]),
    ]


async def fetch_status(api: Api, agent: str | None = None) -> dict[str, Any]:
    """The chain state as ``Verifier.status`` gives it, asked of the daemon at ``api``: every
    agent, page by page (the pages are read one after the other while the daemon runs on, so
    the totals are those of the first), or ``agent`` alone (no agents when the daemon has no
    state for it). ``ApiError`` (``shipper.api.client``) when it cannot be asked."""
    async with api.session() as session:
        if agent is not None:
            found = await session.get_json(f"/api/chains/{quote(agent, safe='')}")
            return found if "agents" in found else {"agents": {}}
        status: dict[str, Any] | None = None
        after = None
        while True:
            page = await session.get_json("/api/chains", after=after, limit=MAX_LIMIT)
            if status is None:
                status = {key: page[key] for key in ("profile", "max_agents", "counts")}
                status["agents"] = {}
            status["agents"].update(page["agents"])
            after = page["next"]
            if after is None:
                return status
