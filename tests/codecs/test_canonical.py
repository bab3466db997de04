"""Tests of RFC 8785 (JCS) canonicalization: RFC examples, escaping, numbers, both code paths."""

from __future__ import annotations

import datetime
import hashlib
import math
import struct
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.codecs import canonical
from shipper.codecs.canonical import canonicalize

# --- A slow, obviously correct reference, written straight from RFC 8785 and ECMA-262 ---------


def ref_number(x: float) -> str:
    """ECMA-262 Number::toString(x) for a finite double, following the specification's steps."""
    assert math.isfinite(x)
    if x == 0:
        return "0"
    if x < 0:
        return "-" + ref_number(-x)
    # Step 5 with the recommended refinement: the fewest digits k such that s * 10**(n - k)
    # rounds to x; among those, the one closest to x (ties: even s). At a given k the decimals
    # that round to x form a run around x, so the correctly rounded one or a neighbour is it.
    exact = Decimal(x)
    for k in range(1, 18):
        rounded = Decimal(f"{x:.{k - 1}e}")
        unit = Decimal(1).scaleb(rounded.adjusted() - (k - 1))
        candidates = [c for c in (rounded - unit, rounded, rounded + unit) if float(c) == x]
        if candidates:
            best = min(
                candidates, key=lambda c: (abs(c - exact), c.normalize().as_tuple().digits[-1] % 2)
            )
            break
    _, digit_tuple, exponent = best.normalize().as_tuple()
    assert isinstance(exponent, int)
    s = "".join(map(str, digit_tuple))
    k = len(s)
    n = k + exponent
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + s
    sign = "+" if n - 1 >= 0 else "-"
    if k == 1:
        return s + "e" + sign + str(abs(n - 1))
    return s[0] + "." + s[1:] + "e" + sign + str(abs(n - 1))


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_SHORT_ESCAPES["\r"] = "\\r"


def ref_string(text: str) -> str:
    """RFC 8785 section 3.2.2.2 string serialization."""
    out = ['"']
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def ref_canonical(value: Any) -> bytes:
    """RFC 8785 canonical form, slowly."""

    def encode(item: Any) -> str:
        if item is None:
            return "null"
        if item is True:
            return "true"
        if item is False:
            return "false"
        if isinstance(item, int):
            return str(item) if abs(item) < 2**53 else ref_number(float(item))
        if isinstance(item, float):
            return ref_number(item)
        if isinstance(item, str):
            return ref_string(item)
        if isinstance(item, list):
            return "[" + ",".join(encode(element) for element in item) + "]"
        assert isinstance(item, dict)
        names = sorted(item, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(ref_string(name) + ":" + encode(item[name]) for name in names) + "}"

    return encode(value).encode("utf-8")


def as_doubles(value: Any) -> Any:
    """``value`` with every number turned into a double (JCS numbers are doubles)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [as_doubles(item) for item in value]
    return {key: as_doubles(item) for key, item in value.items()}


# --- Strategies -----------------------------------------------------------------------------

_TRICKY_CHARS = st.sampled_from(
    (
        *("\ue000", "\uffff", "\ufb33", "\U0001f600", "\U00010000", "\U0010ffff", "\x7f"),
        *("\u2028", "\u2029", "\x00", "\x1f", "\x0b", '"', "\\", "/", "\u00e9", "\r", "a", "0"),
        *(".", "-"),
    )
)
_TEXT = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), _TRICKY_CHARS), max_size=6)
_SPECIAL_FLOATS = st.sampled_from(
    (
        *(0.0, -0.0, 1.0, 45.0, -45.0, 1e15, 1e16, 2.0**60, 1e21, 1.5e21, 1e-5, 1.5e-6, 9.99e-6),
        *(1e-6, 1e-7, 5e-324, 1.7976931348623157e308, 0.18, 56.41, 333333333.33333329, 1e23),
    )
)
_INTS = st.one_of(
    st.integers(), st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from([2**53 + 1])
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    _SPECIAL_FLOATS,
    _TEXT,
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(_TEXT, children, max_size=6)
    ),
    max_leaves=25,
)

# --- RFC 8785 examples ----------------------------------------------------------------------

# Appendix B: IEEE-754 bit patterns and their JCS form.
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_rfc_number_table(bits: str, expected: str) -> None:
    """Every Appendix B number prints as the RFC says, alone, in an array and in an object."""
    number = _double(bits)
    assert canonicalize(number) == expected.encode()
    assert canonicalize([number]) == f"[{expected}]".encode()
    assert canonicalize({"n": number, "s": "x"}) == f'{{"n":{expected},"s":"x"}}'.encode()


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (1.0, "1"),
        (45.0, "45"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e16, "10000000000000000"),
        (2.0**60, "1152921504606847000"),
        (1.5e-6, "0.0000015"),
        (-1e-6, "-0.000001"),
        (1e-5, "0.00001"),
        (0.18, "0.18"),
        (4.5, "4.5"),
        (123e-20, "1.23e-18"),
    ],
)
def test_ecmascript_number_layout(number: float, expected: str) -> None:
    """Doubles print in ECMAScript layout, including where orjson's own layout differs."""
    assert canonicalize([number]) == f"[{expected}]".encode()


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (2**53 - 1, "9007199254740991"),
        (-(2**53) + 1, "-9007199254740991"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),
        (2**53 + 3, "9007199254740996"),
        (-(2**53) - 1, "-9007199254740992"),
        (2**64 - 1, "18446744073709552000"),
        (10**21, "1e+21"),
        (10**30, "1e+30"),
    ],
)
def test_big_integers_become_doubles(number: int, expected: str) -> None:
    """Integers of magnitude 2**53 and beyond print as their nearest double."""
    assert canonicalize([number]) == f"[{expected}]".encode()
    assert canonicalize(number) == expected.encode()


def test_rfc_section_3_2_2_example() -> None:
    """The sample object of RFC 8785 section 3.2.2 canonicalizes to the RFC's output."""
    parsed = orjson.loads(
        b'{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        b' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        b' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(parsed) == expected.encode()


def test_rfc_section_3_2_3_sorting_example() -> None:
    """Member names sort by UTF-16 code units, as in the RFC 8785 section 3.2.3 example."""
    record = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = orjson.loads(canonicalize(record))
    assert list(out.values()) == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_utf16_order_differs_from_code_point_order() -> None:
    """An astral name sorts before a U+E000..U+FFFF name, unlike orjson's code-point order."""
    record = {"\ue000": 1, "\U0001f600": 2, "a": {"\uffff": 3, "\U00010000": 4}}
    expected = '{"a":{"\U00010000":4,"\uffff":3},"\U0001f600":2,"\ue000":1}'.encode()
    assert canonicalize(record) == expected
    assert orjson.dumps(record, option=orjson.OPT_SORT_KEYS) != expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x00", "\\u0000"),
        ("\x08\t\n\x0b\x0c\r", "\\b\\t\\n\\u000b\\f\\r"),
        ("\x1f\x1e", "\\u001f\\u001e"),
        ('"', '\\"'),
        ("\\", "\\\\"),
        ("/", "/"),
        ("\x7f", "\x7f"),
        ("\u2028\u2029", "\u2028\u2029"),
        ("\u00e9\u20ac\U0001f600", "\u00e9\u20ac\U0001f600"),
        ("\ufeff", "\ufeff"),
    ],
)
def test_string_escaping(text: str, expected: str) -> None:
    """Only quote, backslash and C0 controls are escaped (short forms, else lowercase \\u00xx)."""
    want = f'"{expected}"'
    assert canonicalize(text) == want.encode()
    assert canonicalize([text]) == f"[{want}]".encode()
    assert canonicalize({text: text}) == f"{{{want}:{want}}}".encode()


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), 10**400, "\ud800", ["\udfff"], {"\ud83d": 1}],
)
def test_values_without_a_jcs_form_are_refused(value: Any) -> None:
    """Non-finite numbers, integers beyond double range and lone surrogates raise ValueError."""
    with pytest.raises(ValueError, match=r"."):
        canonicalize(value)


class _Text(str):
    __slots__ = ()


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, [b"bytes"], {"a": {1, 2}}, [datetime.datetime(2026, 1, 1)], [_Text("a")], b"x"],
)
def test_non_json_values_are_refused(value: Any) -> None:
    """Keys that are not str and values outside the JSON types raise TypeError."""
    with pytest.raises(TypeError, match=r"."):
        canonicalize(value)


# --- Fast path ------------------------------------------------------------------------------

AUDIT_RECORD: dict[str, Any] = {
    "sequence": 17,
    "timestamp": "2026-02-13T10:45:23.012Z",
    "action": "database.query",
    "agentId": "billing-agent-002",
    "requestDetails": {"method": "GET", "fields": ["email", "ssn"], "resource": "v1.0,x"},
    "evaluationDurationMs": 0.18,
    "cost": -3.75,
    "ok": True,
    "prevHash": "sha256:3e4f",
    "note": "caf\u00e9 \u2603 \U0001f600",
}


def _no_slow_path(value: Any) -> bytes:
    raise AssertionError(f"slow path taken for {value!r}")


def test_audit_record_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typical audit record (even with a string that looks like 1.0) is orjson's output."""
    monkeypatch.setattr(canonical, "_slow", _no_slow_path)
    out = canonicalize(AUDIT_RECORD)
    assert out == orjson.dumps(AUDIT_RECORD, option=orjson.OPT_SORT_KEYS)
    assert out == ref_canonical(AUDIT_RECORD)


@pytest.mark.parametrize(
    "value",
    [[45.0], [1e16], [-0.0], [1.5e-6], [2**53], {"\ue000": 1, "\U0001f600": 2}],
)
def test_differing_inputs_take_the_slow_path(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    """Each input the module docstring lists as differing from orjson goes to the slow path."""
    monkeypatch.setattr(canonical, "_slow", _no_slow_path)
    with pytest.raises(AssertionError, match="slow path taken"):
        canonicalize(value)


def test_seed_generator_records_verify() -> None:
    """Hashes made by the benchmark generator recompute from canonicalize (the seed profile)."""
    from bench.events import generate_lines

    for line in generate_lines(300, 7):
        record = orjson.loads(line)
        claimed = record.pop("hash")
        assert "sha256:" + hashlib.sha256(canonicalize(record)).hexdigest() == claimed


# --- Property tests -------------------------------------------------------------------------


@given(JSON_VALUES)
def test_matches_reference(value: Any) -> None:
    """canonicalize equals the reference implementation on random JSON values."""
    assert canonicalize(value) == ref_canonical(value)


@given(JSON_VALUES)
def test_slow_path_matches_reference(value: Any) -> None:
    """The pure-Python slow path alone equals the reference on random JSON values."""
    assert canonical._slow(value) == ref_canonical(value)


@given(JSON_VALUES)
def test_output_parses_back_to_the_value(value: Any) -> None:
    """The canonical bytes parse back with orjson to the same value, numbers equal as doubles."""
    assert as_doubles(orjson.loads(canonicalize(value))) == as_doubles(value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_match_reference(number: float) -> None:
    """Any finite double prints as ECMAScript does, inside an array and alone."""
    expected = ref_number(number)
    assert canonicalize([number, number]) == f"[{expected},{expected}]".encode()
    assert canonicalize(number) == expected.encode()


@given(st.floats(min_value=1e-7, max_value=1e-4) | st.floats(min_value=1e14, max_value=1e22))
def test_floats_near_layout_thresholds_match_reference(number: float) -> None:
    """Doubles near the plain/exponent thresholds of orjson and ECMAScript print as ECMAScript."""
    assert canonicalize({"x": number}) == f'{{"x":{ref_number(number)}}}'.encode()


@pytest.mark.parametrize("depth", [300, 5000])
def test_deep_values_are_written_without_recursion(depth: int) -> None:
    """A value nested far past orjson's and Python's limits still gets its canonical form."""
    value: Any = [1.0]
    for _ in range(depth):
        value = {"a": [value]}
    out = canonicalize(value)
    assert out == b'{"a":[' * depth + b"[1]" + b"]}" * depth
