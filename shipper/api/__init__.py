"""The operator's HTTP API, served by the daemon's main process when ``[api] address`` is set.

It reads the running daemon's state (the ``Topology``: its metrics registry, chain state, sinks)
and never blocks ingest. Modules:

* ``app``: the ASGI application, the routes of every part gathered over one topology, behind
  the bearer token check when ``[api] token`` is set.
* ``server``: hypercorn's trio worker serving that application on ``[api] address`` (HTTPS with
  ``[api.tls]``).
* ``health``: ``/health``, ``/health/live``, ``/health/ready``.
* ``metrics``: ``/metrics``, the registry in Prometheus's exposition format.
* ``chains``: ``/api/chains`` and ``/api/chains/{agent}``, the chain state a page at a time.
* ``client``: how a CLI command finds and calls the API (address, token, CA).
* ``tap``: ``/api/tap``, the live stream of envelopes entering the WAL, and its hub.
* ``status``: ``/api/status``, its server-sent events, and the status page at ``/``.
* ``reload``: ``POST /api/reload``, a reload as SIGHUP does it (``shipper reload``).
"""
