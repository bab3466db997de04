"""Serving the API: hypercorn's trio worker in the daemon's own event loop.

The listening socket is bound before ``task_status.started``, so a taken address stops the start
(``ListenError``), as a source's does (the same ``bind_tcp``); the value started with is the list of URLs served
(``http://127.0.0.1:8686``; port 0 in the config gives the port the kernel chose).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import Framework
from hypercorn.utils import wrap_app

from shipper.api.app import build_app
from shipper.sources._net import bind_tcp

if TYPE_CHECKING:
    from shipper.config import ApiConfig
    from shipper.topology import Topology


def hypercorn_config(config: ApiConfig) -> HypercornConfig:
    """hypercorn's settings for ``config``: no access log (requests are not evidence, and the
    daemon's log stays shipper's own entries). The socket is bound by ``serve_api``."""
    settings = HypercornConfig()
    settings.accesslog = None
    settings.errorlog = None
    return settings


async def serve_api(
    topology: Topology,
    config: ApiConfig,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until cancelled; started with the URLs it serves."""
    settings = hypercorn_config(config)
    assert config.address is not None
    bound, _ = bind_tcp("api", config.address)  # ListenError: the start stops
    sockets = Sockets(secure_sockets=[], insecure_sockets=bound, quic_sockets=[])
    # starlette's ASGI signature and hypercorn's typed one are the same protocol, spelled apart
    app = cast(Framework, build_app(topology, config))
    await worker_serve(
        wrap_app(app, settings.wsgi_max_body_size, "asgi"),
        settings,
        sockets=sockets,
        task_status=task_status,
    )
