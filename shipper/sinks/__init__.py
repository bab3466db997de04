"""Sinks: each delivers what the WAL holds to its destination, run by the sink driver.

``base`` is the contract a sink implements (``Sink``), ``driver`` runs every sink by the same
rules (batching, resume, retries, dead letters in ``dead_letter``, restarts, counters, health), and
``file`` is the local archive. Each sink type's config (``XSinkConfig`` beside its sink,
registered in ``shipper.config.SINK_TYPES``) builds the sink: ``config.build(context)``; the topology
runs it under a ``SinkDriver``.
"""

from __future__ import annotations

from shipper.sinks.base import Sink

__all__ = ["Sink"]
