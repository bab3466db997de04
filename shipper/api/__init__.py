"""The operator's HTTP API, served by the daemon's main process when ``[api] address`` is set.

It reads the running daemon's state (the ``Topology``: its metrics registry, chain state, sinks)
and never blocks ingest. Modules:

* ``app``: the ASGI application, the routes of every part gathered over one topology.
* ``server``: hypercorn's trio worker serving that application on ``[api] address``.
* ``health``: ``/health/live`` (and the daemon's health as a whole).
"""
