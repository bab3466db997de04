"""RFC 8785 JSON Canonicalization Scheme (JCS): the canonical bytes of a JSON value.

``canonicalize(value)`` takes a JSON value as ``orjson.loads`` returns it (``dict`` with ``str``
keys, ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``) and returns its RFC 8785 form:

* no whitespace; object members sorted by the UTF-16 code units of their names (section 3.2.3),
  which is not the code-point (or UTF-8 byte) order when a name holds a character above U+FFFF
  (a surrogate pair, 0xD800..0xDFFF) and another one at the same position in U+E000..U+FFFF;
* strings (section 3.2.2.2): only ``"``, ``\\`` and the controls U+0000..U+001F are escaped, with
  the short forms ``\\b \\t \\n \\f \\r`` and ``\\u00xx`` (lowercase hex) otherwise; everything
  else, U+007F and U+2028/U+2029 included, is written as literal UTF-8;
* numbers (section 3.2.2.3) are IEEE-754 doubles printed as ECMAScript ``Number.prototype.
  toString`` does: shortest round-trip digits, no fraction for integral values (``45.0`` -> ``45``,
  ``-0.0`` -> ``0``, ``2.0**60`` -> ``1152921504606847000``), exponent form only for magnitudes
  ``>= 1e21`` (``1e+21``) or ``< 1e-6`` (``1e-7``).

Integers: JCS numbers are doubles, so an ``int`` whose magnitude is 2**53 or more is first rounded
to the nearest double (ties to even, as ``float(n)`` does) and printed as that double:
``2**53 + 1`` -> ``9007199254740992``, ``10**21`` -> ``1e+21``. Two records whose integers differ
only beyond double precision therefore have the same canonical form, as in every JCS
implementation. (``orjson.loads`` returns ``int`` up to 64 bits and ``float`` beyond.) An ``int``
too large for a double raises ``ValueError``.

Errors: ``ValueError`` for strings that are not valid Unicode (lone surrogates) and for NaN and
infinities in the slow path or at top level. NaN/infinity nested in an object or array is *not*
detected on the fast path (orjson writes ``null``; screening for it would cost every record a
scan): ``orjson.loads`` never returns them, so pass only what it returns. ``TypeError`` for a
non-``str`` key or a value outside the types above. Tuples are written as arrays. Objects of other
types that orjson itself serializes (``uuid.UUID``, enums, ``orjson.Fragment``; dataclasses,
datetimes and subclasses of the JSON types are refused) are not checked on the fast path: do not
pass them.

Fast path and slow path
-----------------------
``orjson.dumps(value, option=OPT_SORT_KEYS)`` already writes JCS strings byte for byte (same
escapes, verified by the tests) and sorts keys by code point. It differs from JCS only in:

1. integral floats below 1e21, written ``45.0``, ``-0.0``, ``1e+16`` (JCS: ``45``, ``0``,
   ``10000000000000000``);
2. floats with 1e-6 <= |x| < 1e-5, written ``1.5e-6`` (JCS: ``0.0000015``);
3. integers with |n| >= 2**53 (written exactly; JCS rounds them to a double);
4. key order, in an object holding a name with a character in U+E000..U+FFFF and a name (the
   same or another) with a character above U+FFFF;
5. NaN and infinities (written ``null``; JCS has no form for them; see Errors).

Everything else (non-integral floats such as ``0.18`` or ``123.456``, floats ``>= 1e21`` such as
``1.5e+21``, floats below 1e-6 such as ``1e-7``) is already identical. So ``canonicalize`` dumps
with orjson and returns those bytes unless a cheap screen of the output finds a possible
difference:

* orjson refuses the value (``OPT_STRICT_INTEGER`` refuses integers with |n| >= 2**53; other
  reasons are errors the slow path reports);
* the output contains ``+`` (a float >= 1e16: case 1, or a harmless one >= 1e21), ``.0`` followed
  by ``,`` ``]`` or ``}`` (an integral float, case 1), or ``-6`` followed by one of those (case 2),
  anywhere, string contents included;
* the output contains both a byte 0xEE/0xEF (a character U+E000..U+FFFF) and a byte 0xF0..0xF4 (a
  character above U+FFFF), anywhere (case 4);
* the value is not a ``dict`` or ``list`` (top-level scalars are simply formatted directly).

When the screen fires, a walk over the value decides exactly: the slow path (a pure-Python JCS
serializer) is taken if and only if the value holds a case 1, 2, 3 or 5 number or a case 4 object;
otherwise the orjson bytes are returned after all. Both the walk and the slow path are iterative:
no depth of nesting can exhaust Python's recursion limit (orjson refuses to write more than 254
levels, so a deeper value always takes the slow path). A seed-profile audit record (ASCII
strings, integers, a float such as 0.18, nested objects and arrays, ``null``, ``true``) passes the
screen and costs one ``orjson.dumps`` plus four scans of its output (one ``find``, two
literal-prefix regular expressions, ``isascii``); string contents that merely look like a screened
pattern (``"v1.0,"``, ``"+49 30"``) cost the walk, not the slow path.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import orjson

__all__ = ["canonicalize"]

_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_dumps = orjson.dumps
_EncodeError = orjson.JSONEncodeError

# Magnitude from which an int is not necessarily exact as a double (orjson's OPT_STRICT_INTEGER
# refuses |n| >= 2**53 too).
_EXACT_INT_LIMIT = 2**53

# Characters whose UTF-16 order differs from their code-point order relative to each other.
_BMP_HIGH = re.compile("[\ue000-\uffff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``, a JSON value as ``orjson.loads`` returns."""
    kind = type(value)
    if kind is dict or kind is list:
        try:
            out = _dumps(value, option=_OPTIONS)
        except _EncodeError:
            return _slow(value)
        if (
            out.find(b"+") >= 0
            or _integral_float(out) is not None
            or _exponent_minus_6(out) is not None
            or (not out.isascii() and _may_missort(out))
        ) and _needs_slow(value):
            return _slow(value)
        return out
    return _slow(value)


# Screens over orjson's output. Single-byte ``find`` and regular expressions that begin with a
# literal are the cheapest scans CPython offers (multi-byte ``in``/``find`` and alternations cost
# several times more), hence this split.
_integral_float = re.compile(rb"\.0[,\]}]").search  # 45.0, -0.0 (orjson's integral floats)
_exponent_minus_6 = re.compile(rb"-6[,\]}]").search  # 1.5e-6 (JCS: 0.0000015)


def _may_missort(out: bytes) -> bool:
    """Whether the output holds both a U+E000..U+FFFF character and one above U+FFFF."""
    return (out.find(b"\xee") >= 0 or out.find(b"\xef") >= 0) and (
        out.find(b"\xf0") >= 0
        or out.find(b"\xf1") >= 0
        or out.find(b"\xf2") >= 0
        or out.find(b"\xf3") >= 0
        or out.find(b"\xf4") >= 0
    )


def _needs_slow(value: Any) -> bool:
    """Whether orjson's sorted-key form of ``value`` (which it accepted) differs from JCS.

    Exact: true for an integral float below 1e21, a float with 1e-6 <= |x| < 1e-5, a non-finite
    float (the slow path then raises; reached only when a screen fired), or an object whose keys mix
    U+E000..U+FFFF and astral characters. Integers need no look: orjson refused those beyond 2**53
    already. Iterative, like ``_slow``: no recursion however deep the value.
    """
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is float:
            magnitude: float = abs(item)
            if item.is_integer():
                if magnitude < 1e21:
                    return True
            elif (1e-6 <= magnitude < 1e-5) or not math.isfinite(magnitude):
                return True
        elif kind is dict:
            keys = item.keys()
            if not all(key.isascii() for key in keys):
                joined = "".join(keys)
                if _BMP_HIGH.search(joined) and _ASTRAL.search(joined):
                    return True
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
    return False


class _Text(str):
    """Output text on ``_slow``'s work stack (a plain ``str`` there is a value to encode)."""

    __slots__ = ()


_CLOSE_OBJECT: Final = _Text("}")
_CLOSE_ARRAY: Final = _Text("]")
_COMMA: Final = _Text(",")


def _slow(value: Any) -> bytes:
    """RFC 8785 form of ``value`` built in Python: the reference path for every input.

    Iterative (a work stack of values still to encode and text still to write), so that no depth
    of nesting can exhaust Python's recursion limit.
    """
    parts: list[str] = []
    write = parts.append
    stack: list[Any] = [value]
    push, pop = stack.append, stack.pop
    while stack:
        item = pop()
        kind = type(item)
        if kind is _Text:
            write(item)
        elif kind is str:
            write(_string(item))
        elif item is None:
            write("null")
        elif item is True:
            write("true")
        elif item is False:
            write("false")
        elif kind is int:
            write(_format_int(item))
        elif kind is float:
            write(_format_double(item))
        elif kind is dict:
            for key in item:
                if type(key) is not str:
                    raise TypeError(f"object key must be str, not {type(key).__name__}")
            write("{")
            push(_CLOSE_OBJECT)
            keys = sorted(item, key=_utf16_key)
            for index in range(len(keys) - 1, -1, -1):  # pushed last to first: popped in order
                key = keys[index]
                push(item[key])
                push(_Text(("," if index else "") + _string(key) + ":"))
        elif kind is list or kind is tuple:
            write("[")
            push(_CLOSE_ARRAY)
            for index in range(len(item) - 1, -1, -1):
                push(item[index])
                if index:
                    push(_COMMA)
        else:
            raise TypeError(f"not a JSON value: {kind.__name__}")
    return "".join(parts).encode("utf-8")  # every string passed _string: valid Unicode


def _utf16_key(name: str) -> bytes:
    """Sort key ordering names by their UTF-16 code units (big-endian bytes compare the same)."""
    return name.encode("utf-16-be", "surrogatepass")


def _string(text: str) -> str:
    """A JSON string literal, escaped as RFC 8785 requires (orjson's escapes are exactly those)."""
    try:
        return _dumps(text).decode("utf-8")
    except _EncodeError:
        raise ValueError("string is not valid Unicode (lone surrogate)") from None


def _format_int(number: int) -> str:
    """An integer as a JCS number: exact below 2**53, else the nearest double's form."""
    if -_EXACT_INT_LIMIT < number < _EXACT_INT_LIMIT:
        return str(number)
    try:
        as_double = float(number)
    except OverflowError:
        raise ValueError(
            f"integer too large for an IEEE-754 double ({number.bit_length()} bits)"
        ) from None
    return _format_double(as_double)


def _format_double(number: float) -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(number):
        raise ValueError(f"JSON has no form for {number!r}")
    if number == 0.0:
        return "0"  # also -0.0
    sign = "-" if number < 0 else ""
    # repr gives the shortest digits that round-trip (the closest such, as ECMAScript requires);
    # only the layout differs. Decompose into digits s (no leading/trailing zeros) and n such that
    # the value is 0.s * 10**n.
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    n = point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exp = f"e+{e}" if e >= 0 else f"e-{-e}"
    if k == 1:
        return sign + digits + exp
    return sign + digits[0] + "." + digits[1:] + exp
