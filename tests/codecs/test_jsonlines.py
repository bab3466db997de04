"""Tests of the newline-delimited JSON decoder: one JSON object per frame, a reason otherwise."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.codecs.jsonlines import decode_object, is_blank


@pytest.mark.parametrize(
    ("line", "record"),
    [
        (b'{"a":1}', {"a": 1}),
        (b"{}", {}),
        (b' \t{"a": [1, 2.5, null, true, {"b": "c"}]}\r ', {"a": [1, 2.5, None, True, {"b": "c"}]}),
        ('{"caf\u00e9":"\u2603"}'.encode(), {"caf\u00e9": "\u2603"}),
        (b'{"e":"\\u00e9\\n"}', {"e": "\u00e9\n"}),
    ],
)
def test_object_is_accepted(line: bytes, record: dict[str, Any]) -> None:
    """A frame holding one JSON object, with optional surrounding whitespace, decodes to a dict."""
    assert decode_object(line) == record


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"[]", "an array"),
        (b'[{"a":1}]', "an array"),
        (b'"text"', "a string"),
        (b"42", "a number"),
        (b"-1.5e3", "a number"),
        (b"true", "a literal"),
        (b"false", "a literal"),
        (b"null", "a literal"),
    ],
)
def test_non_object_is_rejected_naming_its_kind(line: bytes, kind: str) -> None:
    """Valid JSON that is not an object is rejected with a reason naming what it is."""
    assert decode_object(line) == f"expected a JSON object, got {kind}"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="unterminated"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
        pytest.param(b'{"a":1} {"b":2}', id="two-objects"),
        pytest.param(b'{"a":1},', id="trailing-comma"),
        pytest.param(b'{"a":NaN}', id="nan"),
        pytest.param(b'{"a":1e400}', id="infinite-number"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param(b'{"a":"\xff"}', id="invalid-utf8-in-string"),
        pytest.param(b"\xff\xfe{}", id="invalid-utf8-start"),
        pytest.param(b'{"a":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(b'{"a":"\\ud800"}', id="lone-surrogate-escape"),
        pytest.param(b'{"a":"tab\there"}', id="raw-control-character"),
    ],
)
def test_invalid_json_or_utf8_is_rejected(line: bytes) -> None:
    """Anything that is not valid UTF-8 JSON is rejected with a reason starting "invalid JSON"."""
    reason = decode_object(line)
    assert isinstance(reason, str)
    assert reason.startswith("invalid JSON: ")


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_rejected_without_raising(opener: bytes) -> None:
    """Nesting far past the parser's depth limit yields a reason, not a RecursionError."""
    reason = decode_object(opener * 100_000)
    assert isinstance(reason, str)
    assert reason.startswith("invalid JSON: ")


def test_moderate_nesting_is_accepted() -> None:
    """An object nested a few hundred levels deep is still a record."""
    depth = 200
    line = b'{"a":' * depth + b"1" + b"}" * depth
    record = decode_object(line)
    assert isinstance(record, dict)
    for _ in range(depth - 1):
        record = record["a"]
    assert record == {"a": 1}


@pytest.mark.parametrize(
    ("line", "blank"),
    [
        (b"", True),
        (b" ", True),
        (b" \t\r\x0b\x0c ", True),
        (b"{}", False),
        (b" x ", False),
        (b"\x00", False),
    ],
)
def test_is_blank(line: bytes, blank: bool) -> None:
    """Only empty and whitespace-only frames are blank."""
    assert is_blank(line) is blank


@given(st.binary(max_size=200))
def test_decode_object_never_raises(line: bytes) -> None:
    """For any bytes, decode_object returns a dict or a one-line, non-empty reason."""
    result = decode_object(line)
    if isinstance(result, str):
        assert result
        assert "\n" not in result
        assert result.startswith(("invalid JSON: ", "expected a JSON object, got "))
    else:
        assert isinstance(result, dict)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_any_serialized_object_decodes_to_itself(record: dict[str, Any]) -> None:
    """Every JSON object written by a conforming encoder decodes back to an equal dict."""
    assert decode_object(orjson.dumps(record)) == record


@given(json_values.filter(lambda value: not isinstance(value, dict)))
def test_any_serialized_non_object_is_rejected(value: object) -> None:
    """Every JSON value that is not an object is rejected as not being an object."""
    reason = decode_object(orjson.dumps(value))
    assert isinstance(reason, str)
    assert reason.startswith("expected a JSON object, got ")
