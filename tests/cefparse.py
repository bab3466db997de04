"""CEF parsed back by a third party: ``lognormalizer`` (Debian's ``liblognorm-utils``, the engine
of rsyslog's mmnormalize) with the rulebase ``rule=:%cef:cef%``.

One quirk of it is accounted for here: it drops the first character after the last header ``|``
(``|act=x`` reads as a key ``ct``) unless that character is a space, so a space is put there
before the line is handed to it. Nothing else of the line is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

#: A CEF line's header, up to and with its last ``|`` (fields may hold ``\\|`` and ``\\\\``).
HEADER_END = re.compile(r"CEF:0(?:\|(?:[^\\|]|\\.)*){6}\|")


def needs_lognormalizer() -> str:
    """The lognormalizer executable, or skip the test saying how to get it."""
    path = shutil.which("lognormalizer")
    if path is None:
        pytest.skip("lognormalizer not installed (apt-get install liblognorm-utils)")
    return path


def parse_cef(lines: list[str], work: Path) -> list[dict[str, Any] | None]:
    """Each CEF line as lognormalizer reads it (its ``cef`` object: ``DeviceVendor``,
    ``DeviceProduct``, ``DeviceVersion``, ``SignatureID``, ``Name``, ``Severity``,
    ``Extensions``), or None for a line it refuses; one lognormalizer run for all of them."""
    executable = needs_lognormalizer()
    if not lines:
        return []
    rulebase = work / "cef.rulebase"
    rulebase.write_text("rule=:%cef:cef%\n")
    fed: list[bytes] = []
    for line in lines:
        header = HEADER_END.match(line)
        assert header is not None, f"not a CEF line: {line[:200]!r}"
        spaced = line[: header.end()] + " " + line[header.end() :]
        fed.append(spaced.encode("utf-8"))
    done = subprocess.run(
        [executable, "-r", str(rulebase), "-e", "json"],
        input=b"\n".join(fed) + b"\n",
        capture_output=True,
        timeout=120,
        check=True,
    )
    out = done.stdout.split(b"\n")
    assert out[-1] == b"", done.stdout[-500:]
    assert len(out) == len(lines) + 1, done.stdout[-500:]
    parsed: list[dict[str, Any] | None] = []
    for raw in out[:-1]:
        result = orjson.loads(raw)
        parsed.append(result.get("cef"))
    return parsed
