"""What an archived object holds: JSON lines of envelopes, maybe compressed, and what a manifest
entry says about them.

An object (an S3 data object, or a file of the file sink's archive) is a sequence of envelopes
(``shipper.events``), one per line, each ending in LF, compressed as a whole per its
``compression``:

    compression   key ends in     bytes
    gzip          .jsonl.gz       gzip (RFC 1952), one or more members
    zstd          .jsonl.zst      zstd frames (the ``zstandard`` package)
    none          .jsonl          the lines as they are

What a manifest entry (``shipper.archive.manifest``) says of an object is computed from its
envelopes here, in one way for the sink that writes the entry and for ``verify`` that checks it
(``summarize``):

* ``events``: its lines; ``first`` and ``last``: the ids of its first and last envelope.
* ``agents``: per agent, its first and last *chained event* in the object, in line order. A chained
  event is an envelope with an ``agent`` (a string), a ``chain`` object with an integer
  ``sequence`` (the daemon's verdict: for ``seed`` the record's own sequence, for line hashing the
  record's position in its agent's stream), and a ``record``; its hash is the record's hash field
  (``Profile.hash``: ``record["hash"]`` for ``seed``) when that is a string, else "" (and always
  "" for line-hashed profiles such as ``safeclaw-jsonl``, whose records carry no hash of their
  own). Alerts, malformed events and events without a verdict are not chained events.

Sans-IO: bytes in, values out.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson

from shipper.archive.manifest import AgentSpan, Link
from shipper.chain import Profile

K = TypeVar("K", bound=Hashable)

#: Each compression and the ending of the keys of objects compressed with it.
SUFFIXES: Final = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "none": ".jsonl"}
#: The most an object may hold decompressed before reading it stops (``TooLarge``): 256 MiB.
#: The s3 sink's objects hold one batch (at most ``batch.max_bytes`` of envelopes, 8 MiB by
#: default, plus one envelope), the file sink's files ``max_file_bytes`` (128 MiB by default,
#: plus one line); a crafted object could hold gigabytes in a few hundred KB of gzip. Checking
#: an object takes about seven times its size (its text, its lines, and their envelopes parsed:
#: five times the text for the bench's audit records), so the limit is what bounds verify's
#: memory, not only the decompression's.
MAX_OBJECT_BYTES: Final = 256 << 20
#: A WAL id: ``<segment>-<offset>``.
ID_RE: Final = re.compile(r"(\d+)-(\d+)")


class ContentError(ValueError):
    """Bytes that are not what an archived object holds (altered, or written by something
    else): what is wrong with them."""


class TooLarge(ContentError):
    """An object that holds more than the limit it was read with, decompressed: not one the
    sinks write with their default settings, and possibly a decompression bomb (a few hundred
    KB of gzip can hold gigabytes)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit:,} bytes decompressed")
        self.limit = limit


def is_data_key(key: str) -> bool:
    """Whether ``key`` names a data object (by its ending)."""
    return key.endswith(tuple(SUFFIXES.values()))


def decompress(data: bytes, compression: str, limit: int = MAX_OBJECT_BYTES) -> bytes:
    """The lines an object's ``data`` holds, compressed with ``compression``; ContentError if
    they do not decompress, TooLarge (a ContentError) as soon as they pass ``limit`` bytes
    (see ``MAX_OBJECT_BYTES``): no more than ``limit`` + 1 bytes are ever made."""
    if compression == "none":
        if len(data) > limit:
            raise TooLarge(limit)
        return data
    if compression == "gzip":
        return _gunzip(data, limit)
    if compression == "zstd":
        return _unzstd(data, limit)
    raise ContentError(f"unknown compression {compression!r}")


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip's members one after the other (zero bytes between them are padding, as ``gzip``
    reads them), stopping past ``limit``."""
    parts: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)  # (31: a gzip header and trailer)
            while True:
                part = member.decompress(rest, limit - size + 1)
                size += len(part)
                if size > limit:
                    raise TooLarge(limit)
                parts.append(part)
                if member.eof:
                    rest = member.unused_data.lstrip(b"\0")
                    break
                if not member.unconsumed_tail:
                    raise ContentError("not gzip data: it ends before its last member does")
                rest = member.unconsumed_tail
    except zlib.error as exc:
        raise ContentError(f"not gzip data: {exc}") from exc
    return b"".join(parts)


def _unzstd(data: bytes, limit: int) -> bytes:
    """zstd's frames one after the other, stopping past ``limit``."""
    import zstandard

    parts: list[bytes] = []
    size = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        ) as reader:
            while part := reader.read(limit - size + 1):
                size += len(part)
                if size > limit:
                    raise TooLarge(limit)
                parts.append(part)
    except zstandard.ZstdError as exc:
        raise ContentError(f"not zstd data: {exc}") from exc
    return b"".join(parts)


def split_lines(text: bytes) -> tuple[list[bytes], bytes]:
    """The complete (LF-ended) lines of ``text``, without their LF, and what follows the last
    LF (a torn line; empty if ``text`` ends with LF)."""
    end = text.rfind(b"\n") + 1
    return text[:end].split(b"\n")[:-1], text[end:]


def parse_envelope(line: bytes) -> dict[str, Any]:
    """The envelope on ``line``; ContentError says why it is not one (a version 1 JSON object
    with a WAL id, a ``source`` object and either a ``record`` or a ``malformed`` object)."""
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ContentError(f"not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("v") != 1:
        raise ContentError("not a version 1 envelope")
    event_id = parsed.get("id")
    if not isinstance(event_id, str) or not ID_RE.fullmatch(event_id):
        raise ContentError(f"no WAL id: {event_id!r}")
    if not isinstance(parsed.get("source"), dict):
        raise ContentError("no source object")
    if not isinstance(parsed.get("record", parsed.get("malformed")), dict):
        raise ContentError("neither a record nor a malformed object")
    return parsed


def chain_fields(parsed: dict[str, Any], profile: Profile) -> tuple[str, int, str] | None:
    """The agent, sequence and hash of a chained event (see the module docstring), or None;
    plain values, so that a writer summing up every event makes no object per event."""
    agent = parsed.get("agent")
    chain = parsed.get("chain")
    record = parsed.get("record")
    if not isinstance(agent, str) or not isinstance(chain, dict) or not isinstance(record, dict):
        return None
    sequence = chain.get("sequence")
    if not isinstance(sequence, int):
        return None
    value = record.get(profile.hash) if profile.hash is not None else None
    return agent, sequence, value if isinstance(value, str) else ""


def ends(keys: Sequence[K | None]) -> dict[K, tuple[int, int]]:
    """For each key among ``keys`` (None left out), the indexes of its first and its last
    occurrence, keys in order of first occurrence: where each agent's chain enters and leaves a
    run of lines."""
    found: dict[K, tuple[int, int]] = {}
    for index, key in enumerate(keys):
        if key is not None:
            first = found.get(key)
            found[key] = (index, index) if first is None else (first[0], index)
    return found


def spans(links: Sequence[tuple[str, int, str] | None]) -> dict[str, AgentSpan]:
    """Each agent's first and last link among ``links`` (``chain_fields`` of each event, in
    line order): what a manifest entry's ``agents`` says of an object."""
    found = ends([link[0] if link is not None else None for link in links])
    agents: dict[str, AgentSpan] = {}
    for agent, (first, last) in found.items():
        head, tail = links[first], links[last]
        assert head is not None
        assert tail is not None
        agents[agent] = AgentSpan(Link(head[1], head[2]), Link(tail[1], tail[2]))
    return agents


@dataclass(frozen=True, slots=True)
class Summary:
    """What a manifest entry says of an object (see the module docstring)."""

    events: int
    first: str | None
    last: str | None
    agents: dict[str, AgentSpan]


def summarize(envelopes: Iterable[dict[str, Any]], profile: Profile) -> Summary:
    """The summary of an object's envelopes (parsed), given in line order."""
    count = 0
    first: str | None = None
    last: str | None = None
    links: list[tuple[str, int, str] | None] = []
    for parsed in envelopes:
        count += 1
        last = parsed["id"]
        if first is None:
            first = last
        links.append(chain_fields(parsed, profile))
    return Summary(count, first, last, spans(links))
