"""What an event a source handed on may hold: it will be pickled across a pipe by ingest workers."""

from __future__ import annotations

import dataclasses

from shipper.events import Event, Malformed

#: Values an event may hold once its source is done with it (besides small tuples of them).
PLAIN: tuple[type, ...] = (bytes, str, int, bool, type(None))


def holds_only_plain_values(event: Event) -> bool:
    """Whether ``event`` holds only bytes, strings, numbers, small tuples of them, a ``Malformed``
    made of them and its (shared, per-connection) ``source`` object: no parsed record, no
    ``syslog`` or ``identity_mismatch`` object (their bytes are in ``sealed``)."""
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if field.name == "source" or type(value) in PLAIN:
            continue
        if isinstance(value, Malformed):
            value = (value.reason, value.raw, value.size)
        if not (isinstance(value, tuple) and len(value) <= 8):
            return False
        if not all(type(item) in PLAIN for item in value):
            return False
    return True
