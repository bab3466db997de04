"""Tests of the newline-delimited JSON decoder: one JSON object per frame, a reason otherwise."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.codecs.jsonlines import MAX_DEPTH, Refused, decode_object, is_blank


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


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """An object nested exactly MAX_DEPTH levels deep is still a record."""
    line = b'{"a":' * (MAX_DEPTH - 1) + b"[1]" + b"}" * (MAX_DEPTH - 1)
    record = decode_object(line)
    assert isinstance(record, dict)
    for _ in range(MAX_DEPTH - 2):
        record = record["a"]
    assert record == {"a": [1]}


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"a":' * MAX_DEPTH + b"{}" + b"}" * MAX_DEPTH, id="objects"),
        pytest.param(b'{"d":' + b"[" * MAX_DEPTH + b"1.0" + b"]" * MAX_DEPTH + b"}", id="arrays"),
        pytest.param(
            b'{"agentId":"x","sequence":1,"prevHash":"","hash":"sha256:00","d":'
            + b"[" * 1000
            + b"1.0"
            + b"]" * 1000
            + b"}",
            id="the-reported-record",
        ),
    ],
)
def test_nesting_past_the_limit_is_refused(line: bytes) -> None:
    """A JSON object nested deeper than MAX_DEPTH is refused as over a limit, naming the limit."""
    reason = decode_object(line)
    assert isinstance(reason, Refused)
    assert reason == f"nested deeper than {MAX_DEPTH} levels of objects and arrays"


def test_a_wide_flat_record_is_not_too_deep() -> None:
    """Many sibling arrays count once each toward depth, not toward one deep path."""
    line = b'{"a":[' + b",".join([b"[[1]]"] * 5000) + b"]}"
    record = decode_object(line)
    assert isinstance(record, dict)
    assert len(record["a"]) == 5000


@pytest.mark.parametrize(
    ("line", "name"),
    [
        pytest.param(b'{"agentId":"a","agentId":"b"}', "agentId", id="top-level"),
        pytest.param(b'{"x":{"k":1,"k":2}}', "k", id="nested-object"),
        pytest.param(b'{"x":[1,{"k":1,"k":1}]}', "k", id="in-an-array-same-value"),
        pytest.param(b'{"a" :1,"a":2}', "a", id="space-before-colon"),
        pytest.param(b'{"a"\n:1,"a":2}', "a", id="newline-before-colon"),
        pytest.param(b'{"a":1,"\\u0061":2}', "a", id="escaped-same-name"),
        pytest.param(b'{"a" :1,"a":2,"x":"\\":"}', "a", id="quote-colon-in-string"),
        pytest.param(b'{"a":1, "b":{"c":2}, "a":3}', "a", id="python-separators"),
    ],
)
def test_duplicate_member_names_are_refused(line: bytes, name: str) -> None:
    """An object that names a member twice, anywhere in the record, is refused naming the name."""
    reason = decode_object(line)
    assert isinstance(reason, Refused)
    assert reason.startswith(f'duplicate member name "{name}"')


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"a":"x\\":y","b":1}', id="quote-colon-in-string"),
        pytest.param(b'{"a" : 1, "b" : {"a" : 2}}', id="loose-separators"),
        pytest.param(b'{"t":"10:45:23","a":{"a":{"a":1}}}', id="same-name-other-objects"),
        pytest.param(b'{"a\\\\":1,"a":2}', id="name-ending-in-backslash"),
    ],
)
def test_distinct_names_that_trip_the_screen_are_accepted(line: bytes) -> None:
    """Records the cheap screen cannot clear are checked exactly, and accepted when names differ."""
    assert isinstance(decode_object(line), dict)


def test_a_long_duplicate_name_is_cut_in_the_reason() -> None:
    """The reason shows at most the first 80 characters of a long duplicate name."""
    name = "n" * 500
    reason = decode_object(b'{"%s":1,"%s":2}' % (name.encode(), name.encode()))
    assert isinstance(reason, Refused)
    assert '"' + "n" * 80 + '" (cut)' in reason
    assert len(reason) < 200


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
        assert result.startswith(
            ("invalid JSON: ", "expected a JSON object, got ", "duplicate member name ")
        )
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


# Objects as lists of member pairs (so that a name may repeat), written with the separators and
# escapes any sender might choose: the screen must never clear a record that repeats a name.
_names = st.sampled_from(["a", "b", "k", 'q":', "a\\", "é", "t:"])
_leaf = st.one_of(st.integers(-5, 5), st.sampled_from(['":', "x", "10:45", " ", '\\":']), st.none())
_pairs_tree = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(st.tuples(_names, children), max_size=4).map(tuple)
    ),
    max_leaves=12,
)


def _write_string(text: str, escape_all: bool) -> str:
    if escape_all:
        return '"' + "".join(f"\\u{ord(char):04x}" for char in text) + '"'
    return orjson.dumps(text).decode()


def _write(value: Any, data: st.DataObject) -> str:
    """JSON text of a pairs tree, with randomly chosen whitespace and name escapes."""
    space = data.draw(st.sampled_from(["", " ", "\n", " \t "]))
    if isinstance(value, tuple):  # an object
        members = []
        for name, item in value:
            escape = data.draw(st.booleans())
            before = data.draw(st.sampled_from(["", "", " ", "\r\n"]))
            members.append(f"{_write_string(name, escape)}{before}:{space}{_write(item, data)}")
        return "{" + f",{space}".join(members) + "}"
    if isinstance(value, list):
        return "[" + f",{space}".join(_write(item, data) for item in value) + "]"
    return _write_string(value, False) if isinstance(value, str) else orjson.dumps(value).decode()


def _repeats_a_name(value: Any) -> bool:
    if isinstance(value, tuple):
        names = [name for name, _item in value]
        return len(set(names)) != len(names) or any(_repeats_a_name(item) for _n, item in value)
    if isinstance(value, list):
        return any(_repeats_a_name(item) for item in value)
    return False


@given(st.lists(st.tuples(_names, _pairs_tree), max_size=5).map(tuple), st.data())
def test_duplicate_names_are_found_however_the_record_is_written(
    top: tuple[tuple[str, Any], ...], data: st.DataObject
) -> None:
    """A record is refused for a duplicate name exactly when one of its objects repeats a name."""
    result = decode_object(_write(top, data).encode())
    if _repeats_a_name(top):
        assert isinstance(result, Refused)
        assert result.startswith("duplicate member name ")
    else:
        assert isinstance(result, dict)
