"""Newline-delimited JSON records (the ``json_tls`` source's format).

Each frame (see ``framing.LineFramer``) must hold exactly one JSON object (RFC 8259 ``object``),
UTF-8 encoded, optionally surrounded by whitespace::

    line = *ws object *ws          ; RFC 8259 section 2 and 4

Anything else (invalid JSON, invalid UTF-8, a JSON array or scalar, nesting deeper than the parser's
limit) is not a record: ``decode_object`` returns the reason instead, and the caller turns the
frame into a ``malformed`` event. Blank lines carry nothing and are counted, not archived.
"""

from __future__ import annotations

from typing import Any

import orjson

_JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number"}


def is_blank(line: bytes) -> bool:
    """Whether a frame is empty or whitespace only."""
    return not line or line.isspace()


def decode_object(line: bytes) -> dict[str, Any] | str:
    """The JSON object in ``line``, or a one-line reason why it is not one."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if isinstance(value, dict):
        return value
    if value is None or isinstance(value, bool):
        kind = "a literal"
    else:
        kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
    return f"expected a JSON object, got {kind}"
