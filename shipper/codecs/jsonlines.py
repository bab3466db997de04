"""Newline-delimited JSON records (the ``json_tls`` source's format), and the limits every record
meets, whatever carried it (syslog MSGs that hold a JSON object are decoded here too).

Each frame (see ``framing.LineFramer``) must hold exactly one JSON object (RFC 8259 ``object``),
UTF-8 encoded, optionally surrounded by whitespace::

    line = *ws object *ws          ; RFC 8259 section 2 and 4

Anything else (invalid JSON, invalid UTF-8, a JSON array or scalar) is not a record:
``decode_object`` returns the reason instead, and the caller turns the frame into a ``malformed``
event. Blank lines carry nothing and are counted, not archived.

A JSON object is a record only within these limits (a ``Refused`` reason otherwise):

* **Depth**: at most ``MAX_DEPTH`` (254) nested levels of objects and arrays, the record itself
  being level 1: what orjson itself writes back, so that no one who walks a record (the canonical
  form, the envelope, a reader of the archive) meets one deeper.
* **Unique member names** (RFC 7493, I-JSON, section 2.3; RFC 8785 hashing presumes I-JSON): an
  object that names a member twice, anywhere in the record, is refused; the reason names the first
  duplicate name found. A parser keeps one of the two values (orjson the last), so a record with two
  ``agentId`` members could be checked on one value and read back with the other.
* **Size** is the framer's business (``max_line_bytes``, ``max_message_bytes``): a record never
  exceeds its source's frame limit.

Both checks cost little for records written by a JSON library. The parsed value is written back
with orjson (which refuses what is too deep); when that gives the line's very bytes, as it does for
what orjson, ``JSON.stringify`` and other compact writers send, the line holds exactly the parsed
members and cannot repeat a name. Otherwise the members are counted: a name's closing quote and its
colon make ``":``, which a string can only hold as ``\":`` (its quote escaped). So when neither the
line nor orjson's bytes hold ``\":``, and the line has no whitespace between a name and its colon,
the count of ``":`` in the line is the number of members it names, and in orjson's bytes the number
of members parsed: equal, no name was given twice. Only records that fail both screens are parsed
again, by the standard library with every object's member pairs in hand.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

#: The deepest nesting of objects and arrays a record may have (the record itself is level 1):
#: orjson writes no deeper.
MAX_DEPTH: Final = 254

_JSON_TYPE_NAMES = {list: "an array", str: "a string", int: "a number", float: "a number"}
#: A member name's closing quote, whitespace, then its colon: the count screen cannot see it.
_LOOSE_NAME_END: Final = re.compile(rb'"[ \t\r\n]+:')
#: How much of a duplicate member name a reason shows.
_NAME_SHOWN: Final = 80


class Refused(str):
    """The reason why a JSON object is not accepted as a record (over a limit, duplicate names).

    A ``str`` like every other reason; unlike them, it says that the input *is* a JSON object, so a
    syslog MSG holding one is refused too, not archived as plain text.
    """

    __slots__ = ()


def is_blank(line: bytes) -> bool:
    """Whether a frame is empty or whitespace only."""
    return not line or line.isspace()


def decode_object(line: bytes) -> dict[str, Any] | str:
    """The JSON object in ``line``, or a one-line reason why it is not a record (a ``Refused``
    when it is a JSON object over a limit)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if type(value) is not dict:
        if value is None or isinstance(value, bool):
            kind = "a literal"
        else:
            kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        return f"expected a JSON object, got {kind}"
    try:
        written = orjson.dumps(value)
    except orjson.JSONEncodeError:  # orjson writes no deeper than MAX_DEPTH levels
        return Refused(f"nested deeper than {MAX_DEPTH} levels of objects and arrays")
    if written != line and not _same_member_count(line, written):
        duplicate = _duplicate_name_reason(line)
        if duplicate is not None:
            return Refused(duplicate)
    return value


def _same_member_count(line: bytes, written: bytes) -> bool:
    """Whether ``line`` surely names as many members as orjson wrote back (``written``): see the
    module docstring. False means "cannot tell", not "differ"."""
    return (
        line.count(b'":') == written.count(b'":')
        and b'\\":' not in written
        and b'\\":' not in line
        and _LOOSE_NAME_END.search(line) is None
    )


def _duplicate_name_reason(line: bytes) -> str | None:
    """The reason naming the first member name that an object of ``line`` repeats, or None.

    ``line`` is a JSON object orjson accepted and wrote back (so within ``MAX_DEPTH``, which the
    standard library's parser handles); names are compared after
    unescaping, as RFC 7493 does (``"a"`` and ``"\\u0061"`` are the same name).
    """
    found: list[str] = []

    def check(pairs: list[tuple[str, Any]]) -> None:
        if not found:
            names = [name for name, _value in pairs]
            if len(set(names)) != len(names):
                seen: set[str] = set()
                for name in names:
                    if name in seen:
                        found.append(name)
                        break
                    seen.add(name)

    def ignore(_text: str) -> None:  # numbers: not needed, and not converted (no digit limits)
        return None

    try:
        json.loads(line, object_pairs_hook=check, parse_int=ignore, parse_float=ignore)
    except (ValueError, RecursionError) as exc:  # orjson accepted it: cannot happen
        return f"member names cannot be checked: {exc}"
    if not found:
        return None
    name = found[0]
    shown = orjson.dumps(name[:_NAME_SHOWN]).decode()
    more = " (cut)" if len(name) > _NAME_SHOWN else ""
    return f"duplicate member name {shown}{more}: a record must name each member once (RFC 7493)"
