"""Tests of secrets in the config: read from the file or ``${ENV}``, never shown."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from shipper.config import SINK_TYPES, Secret, parse_config
from shipper.errors import ConfigError
from shipper.logging import get_logger
from tests.conftest import LogCapture
from tests.probe_sink import ProbeSinkConfig

VALUE = "whsec_c2VjcmV0LXZhbHVlLTEyMzQ1"

RAW: dict[str, Any] = {
    "sources": {"a": {"type": "json_tls", "address": "127.0.0.1:6515"}},
    "sinks": {"out": {"type": "probe", "token": "${TOKEN}"}},
}


@pytest.fixture(autouse=True)
def _probe_type() -> Any:
    """The probe sink type (which takes a secret ``token``) is registered for every test here."""
    with SINK_TYPES.registered(ProbeSinkConfig):
        yield


def token_of(raw: dict[str, Any], env: dict[str, str]) -> Secret | None:
    """The probe sink's token as parsed."""
    sink = parse_config(raw, env=env).sinks["out"]
    assert isinstance(sink, ProbeSinkConfig)
    return sink.token


def test_a_secret_reveals_its_value_and_shows_nothing() -> None:
    """``reveal()`` gives the value; repr, str and formatting give only ``Secret('***')``."""
    secret = Secret(VALUE)
    assert secret.reveal() == VALUE
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret]  # noqa: UP031
    assert shown == ["Secret('***')"] * 5
    assert secret == Secret(VALUE)
    assert secret != Secret(VALUE + "x")
    assert len({secret, Secret(VALUE)}) == 1


def test_a_secret_comes_from_the_environment_or_the_file() -> None:
    """``${NAME}`` takes the variable; a literal string is the secret itself."""
    assert token_of(RAW, {"TOKEN": VALUE}) == Secret(VALUE)
    raw = copy.deepcopy(RAW)
    raw["sinks"]["out"]["token"] = VALUE
    assert token_of(raw, {}) == Secret(VALUE)
    del raw["sinks"]["out"]["token"]
    assert token_of(raw, {}) is None


def test_a_config_holding_a_secret_does_not_show_it() -> None:
    """The repr of the whole config, and of the sink's, shows the secret as ``Secret('***')``."""
    config = parse_config(RAW, env={"TOKEN": VALUE})
    for text in (repr(config), repr(config.sinks["out"]), str(config)):
        assert VALUE not in text
        assert "Secret('***')" in text


@pytest.mark.parametrize(
    ("token", "env", "expected"),
    [
        pytest.param(
            VALUE + "${TOKEN",
            {},
            'sinks.out.token: expected "${NAME}" (NAME of letters, digits and _) or "$$" for a '
            'literal "$", found a "${" that opens no variable',
            id="bad-interpolation",
        ),
        pytest.param(
            "${TOKEN}",
            {"TOKEN": VALUE + " trailing"},
            "sinks.out.token: expected a token without spaces (the value is not shown)",
            id="refused-by-check",
        ),
        pytest.param(
            "${TOKEN}",
            {"TOKEN": ""},
            "sinks.out.token: expected a secret that is not empty, got an empty string",
            id="empty",
        ),
        pytest.param(
            123456789,
            {},
            "sinks.out.token: expected a string, got a number",
            id="number",
        ),
        pytest.param(
            ["${TOKEN}"],
            {"TOKEN": VALUE},
            "sinks.out.token: expected a string, got a list",
            id="list",
        ),
    ],
)
def test_a_problem_with_a_secret_never_shows_it(
    token: object, env: dict[str, str], expected: str
) -> None:
    """Every problem with a secret names its key and what is wrong, never the value."""
    raw = copy.deepcopy(RAW)
    raw["sinks"]["out"]["token"] = token
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    assert [str(problem) for problem in info.value.problems] == [expected]
    for text in (str(info.value), repr(info.value), repr(info.value.problems)):
        assert VALUE not in text
        assert "123456789" not in text


def test_a_logged_config_shows_no_secret(logs: LogCapture) -> None:
    """A config object logged as a field (JSON log) or through stdlib logging (its repr) shows
    ``Secret('***')`` and never the value."""
    config = parse_config(RAW, env={"TOKEN": VALUE})
    get_logger("test").info("config_loaded", config=config, sink=config.sinks["out"])
    logging.getLogger("test.stdlib").warning("config %s", config)
    text = logs.stream.getvalue()
    assert VALUE not in text
    (entry,) = logs.entries("config_loaded")
    assert entry["sink"]["token"] == "Secret('***')"
    assert entry["config"]["sinks"]["out"]["token"] == "Secret('***')"
    assert "Secret('***')" in text.splitlines()[-1]
