"""CEF (ArcSight Common Event Format): an envelope (``shipper.events``) as one CEF line.

The format (CEF revision 25, version 0)::

    CEF:0|Device Vendor|Device Product|Device Version|Signature ID|Name|Severity|Extension
    Extension = key=value *(SP key=value)

Escaping (text is UTF-8 throughout):

* Header fields escape ``\\`` as ``\\\\`` and ``|`` as ``\\|``; ``=`` needs no escape there. A header
  field cannot hold a line break: CR and LF become a space.
* Extension values escape ``\\`` as ``\\\\`` and ``=`` as ``\\=``, and write a line feed as ``\\n``
  and a carriage return as ``\\r``; ``|`` and spaces need no escape (a value runs up to the space
  before the next ``key=``). So a CEF line never holds a raw CR or LF.
* A NUL, which ends the message at many receivers (and in C parsers), becomes U+FFFD (the
  replacement character) in the header and in values.
* Extension keys are CEF's own names (``act``, ``suser``, ``cs1``, ...: ``KEYS``, the key names
  of the CEF specification's extension dictionary); they are never escaped, so any other key is
  refused (``ValueError``).
* An empty value is left out with its key: CEF has no empty value distinct from an absent one,
  and parsers refuse ``key=`` at the end of a line.

Header field limits, after ArcSight's field lengths: Device Vendor, Product and Version 63, Signature
ID 1023, Name 512. Longer text is cut to that many UTF-8 bytes, on a character boundary, before it
is escaped. Severity is an integer 0 (lowest) to 10.

Values by key type: integer keys (``cn1``, ``cnt``, ``spt``, ...: ``INTEGER_KEYS``) take an
integer (or a string of one), otherwise the key is left out; timestamp keys (``rt``, ``start``,
``end``, ...: ``TIME_KEYS``) take an RFC 3339 string (without a zone: UTC) or an integer of
milliseconds since the epoch, and are written as milliseconds since the epoch; every other key
takes text: a string as it is, ``true``/``false``, a number as JSON writes it, an object or list
as compact JSON.

Mapping an envelope
===================

A mapping says where each extension key's value comes from: a list of sources, the first that
gives a value the key can take wins (``Rule``: a time that is no time tries the next source). A
source is a ``FieldPath`` into the envelope (``record.userId``, ``agent``, ``chain.status``:
dotted keys, no list indices), a ``Literal``, or, in the default
mapping only, a ``Target`` (the target resource, put under ``request`` when it is a URL, under
``fname`` when it is a file path, else under ``cs3``). ``DEFAULT_MAPPING`` reads both record
profiles, seed (``action``, ``effect``, ``agentId``, ``userId``, ``target``, ``reason``,
``sessionId``, ``matchedRule``, ``timestamp``, ``sequence``, ``hash``) and SafeClaw
(``actionType``, ``toolName``, ``resource``, ``outcome``, ``timestamp``), and the envelope
(``agent``, ``chain.status``, ``received_at``, ``id``)::

    act       record.action, record.actionType         outcome  record.effect, record.outcome
    suser     agent, record.agentId                    cs1      the same (cs1Label=agentId)
    duser     record.userId, record.user               rt       record.timestamp, received_at
    cs2       record.matchedRule (cs2Label=matchedRule) reason  record.reason
    request   the target if a URL         fname  the target if a file path     cs3  else
              (target: record.target, record.resource, record.requestDetails.resource;
              cs3Label=resource)
    cs4       record.sessionId (cs4Label=sessionId)    cn1      record.sequence, chain.sequence
    cs5       record.hash (cs5Label=recordHash)        cs6      chain.status (cs6Label=chainStatus)
    cn1Label  sequence                                 deviceProcessName  record.toolName
    externalId  id (the event's WAL id)                msg      malformed.reason, record.detail

A label key (``cs1Label``, ``cn1Label``, ...) is written only when its value key is.

In a config (``[sinks.X.mapping]``, read by ``parse_rule``; ``mapping_with`` merges it into the
default), each line sets one CEF key to::

    duser = "record.userId"                          a field path
    duser = ["record.principal", "record.userId"]    the first present wins
    duser = ["record.principal", { value = "?" }]    ... with a literal as the fallback
    dvchost = { value = "gateway-1" }                a literal (text or an integer)
    cs5 = false                                      leave the key (and its default label) out

The header: Signature ID is the action (``record.action`` or ``record.actionType``;
``shipper.malformed`` for input that could not be parsed); Name is a short text (``Agent action
denied: database.query``, ``Chain alert: broken_link``); Severity (``describe``):

* an agent's action by its effect: allowed 3, failed 5, denied 6, no or another effect 4;
* ``shipper.chain_alert`` and ``shipper.identity_alert``: 10 when critical, else 9;
* ``shipper.delivery_alert`` 7, ``shipper.archive_seal`` 1, other alerts by their ``severity``
  (low 3, medium 5, high 7, critical 10; else 5);
* malformed input 5.

This module does no I/O (``shipper.sinks.cef_syslog`` sends its lines).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from shipper.events import ALERT_SOURCE_ID, CHAIN_ALERT, DELIVERY_ALERT, IDENTITY_ALERT

#: Longest header fields (UTF-8 bytes), after ArcSight's field lengths.
VENDOR_LIMIT: Final = 63
PRODUCT_LIMIT: Final = 63
VERSION_LIMIT: Final = 63
SIGNATURE_ID_LIMIT: Final = 1023
NAME_LIMIT: Final = 512

#: ``record.action`` of an archive seal (``shipper.sinks.s3.ARCHIVE_SEAL``).
ARCHIVE_SEAL: Final = "shipper.archive_seal"
#: Signature ID of input that could not be parsed.
MALFORMED_SIGNATURE: Final = "shipper.malformed"


def _words(text: str) -> list[str]:
    return text.split()


_NUMBERED = (
    [f"cs{n}" for n in range(1, 7)]
    + [f"cn{n}" for n in range(1, 4)]
    + [f"cfp{n}" for n in range(1, 5)]
    + [f"c6a{n}" for n in range(1, 5)]
    + ["deviceCustomDate1", "deviceCustomDate2", "flexDate1", "flexString1", "flexString2"]
    + ["flexNumber1", "flexNumber2"]
)
#: The extension keys of the CEF specification's dictionary (revision 25).
KEYS: Final[frozenset[str]] = frozenset(
    _words(
        """act app cat cnt destinationDnsDomain destinationServiceName destinationTranslatedAddress
    destinationTranslatedPort deviceDirection deviceDnsDomain deviceExternalId deviceFacility
    deviceInboundInterface deviceNtDomain deviceOutboundInterface devicePayloadId
    deviceProcessName deviceTranslatedAddress dhost dmac dntdom dpid dpriv dproc dpt dst dtz duid
    duser dvc dvchost dvcmac dvcpid end externalId fileCreateTime fileHash fileId
    fileModificationTime filePath filePermission fileType fname fsize in msg oldFileCreateTime
    oldFileHash oldFileId oldFileModificationTime oldFileName oldFilePath oldFilePermission
    oldFileSize oldFileType out outcome proto reason request requestClientApplication
    requestContext requestCookies requestMethod rt shost smac sntdom sourceDnsDomain
    sourceServiceName sourceTranslatedAddress sourceTranslatedPort spid spriv sproc spt src start
    suid suser type agentDnsDomain agentNtDomain agentTranslatedAddress
    agentTranslatedZoneExternalID agentTranslatedZoneURI agentZoneExternalID agentZoneURI agt
    ahost aid amac art at atz av customerExternalID customerURI
    destinationTranslatedZoneExternalID destinationTranslatedZoneURI destinationZoneExternalID
    destinationZoneURI deviceTranslatedZoneExternalID deviceTranslatedZoneURI
    deviceZoneExternalID deviceZoneURI dlat dlong eventId rawEvent slat slong
    sourceTranslatedZoneExternalID sourceTranslatedZoneURI sourceZoneExternalID sourceZoneURI
    """
    )
    + _NUMBERED
    + [f"{key}Label" for key in _NUMBERED]
)
#: Keys whose value is an integer.
INTEGER_KEYS: Final[frozenset[str]] = frozenset(
    _words(
        """cn1 cn2 cn3 cnt in out fsize oldFileSize spt dpt spid dpid dvcpid sourceTranslatedPort
    destinationTranslatedPort eventId type flexNumber1 flexNumber2"""
    )
)
#: Keys whose value is a time, written in milliseconds since the epoch.
TIME_KEYS: Final[frozenset[str]] = frozenset(
    _words(
        """rt start end art deviceCustomDate1 deviceCustomDate2 flexDate1 fileCreateTime
    fileModificationTime oldFileCreateTime oldFileModificationTime"""
    )
)
#: The top-level keys of an envelope: where a field path may start.
ENVELOPE_KEYS: Final = (
    "v",
    "id",
    "received_at",
    "source",
    "syslog",
    "agent",
    "chain",
    "identity_mismatch",
    "record",
    "malformed",
)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FILE_RE: Final = re.compile(r"(?:/|~/|\.{1,2}/|[A-Za-z]:[\\/]|\\\\)")
_SEGMENT_RE: Final = re.compile(r"[^.\s]+")


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    if len(text) * 4 <= limit:  # (no character takes more than 4 bytes)
        return text
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def escape_header(text: str, limit: int) -> str:
    """A header field: cut to ``limit`` bytes, ``\\`` and ``|`` escaped, CR and LF as spaces."""
    # (A chain of replace calls: each is one C pass that returns the string itself when the
    # character is absent, several times faster than str.translate with a table.)
    return (
        truncate(text, limit)
        .replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("\r", " ")
        .replace("\n", " ")
        .replace("\0", "\ufffd")
    )


def escape_value(text: str) -> str:
    """An extension value: ``\\`` and ``=`` escaped, CR and LF as ``\\r`` and ``\\n``."""
    return (
        text.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\ufffd")
    )


def check_key(key: str) -> str:
    """``key`` if it is a CEF extension key; ValueError saying so otherwise."""
    if key not in KEYS:
        raise ValueError(f"expected a CEF extension key (act, suser, cs1, ...), got {key!r}")
    return key


def format_cef(
    vendor: str,
    product: str,
    version: str,
    signature_id: str,
    name: str,
    severity: int,
    extension: Iterable[tuple[str, str]],
) -> str:
    """One CEF line (no line end). ``extension``: (key, text) pairs in order; a pair whose text
    is empty is left out. Raises ValueError for a key CEF does not know or a severity outside
    0 to 10."""
    if not 0 <= severity <= 10:
        raise ValueError(f"CEF severity is 0 to 10, got {severity}")
    pairs = " ".join(f"{check_key(key)}={escape_value(text)}" for key, text in extension if text)
    return (
        f"CEF:0|{escape_header(vendor, VENDOR_LIMIT)}|{escape_header(product, PRODUCT_LIMIT)}"
        f"|{escape_header(version, VERSION_LIMIT)}"
        f"|{escape_header(signature_id, SIGNATURE_ID_LIMIT)}"
        f"|{escape_header(name, NAME_LIMIT)}|{severity}|{pairs}"
    )


# --- values ------------------------------------------------------------------------------------


def text_of(value: Any) -> str | None:
    """A JSON value as extension text (None: nothing to write)."""
    if type(value) is str:
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()  # a number as JSON writes it; an object, compact


def integer_of(value: Any) -> str | None:
    """An integer key's text, or None when ``value`` is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
        return str(int(value))
    return None


def millis_of(value: Any) -> str | None:
    """A time key's text (milliseconds since the epoch) from an RFC 3339 string (UTC when it
    has no zone) or an integer of milliseconds; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return str((moment - _EPOCH) // _MS)


# --- mapping -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A field of the envelope by its dotted path (``record.userId``); absent, or null, when
    any step is missing or not an object."""

    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> FieldPath:
        """A path from its dotted text; ValueError("expected ...") for one that cannot name an
        envelope field."""
        parts = tuple(text.split("."))
        if not all(_SEGMENT_RE.fullmatch(part) for part in parts):
            raise ValueError("expected a dotted field path such as record.userId")
        if parts[0] not in ENVELOPE_KEYS:
            raise ValueError(
                "expected a field path starting with an envelope key ("
                + ", ".join(ENVELOPE_KEYS)
                + ")"
            )
        return cls(parts)

    def get(self, envelope: Mapping[str, Any]) -> Any:
        value: Any = envelope
        for part in self.parts:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def __str__(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class Literal:
    """A fixed value."""

    value: str | int

    def get(self, envelope: Mapping[str, Any]) -> Any:
        return self.value


#: Where the target resource of an action is, in the profiles shipper knows.
TARGET_PATHS: Final = (
    FieldPath(("record", "target")),
    FieldPath(("record", "resource")),
    FieldPath(("record", "requestDetails", "resource")),
)


@dataclass(frozen=True, slots=True)
class Target:
    """The target resource (the first of ``TARGET_PATHS`` present) when it is of ``kind``:
    ``url`` (``scheme://...``), ``file`` (``/``, ``~/``, ``./``, ``../``, ``C:\\``, ``\\\\``), or
    ``other`` (anything else)."""

    kind: str

    def get(self, envelope: Mapping[str, Any]) -> Any:
        found = target_of(envelope)
        return found[1] if found is not None and found[0] == self.kind else None


def target_of(envelope: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The target resource (the first of ``TARGET_PATHS`` present) and its kind (``Target``);
    None without one."""
    for get in _TARGET_GETTERS:
        value = get(envelope, None)
        if value is not None:
            break
    else:
        return None
    if not isinstance(value, str):
        return "other", value
    if _URL_RE.match(value):
        return "url", value
    if _FILE_RE.match(value):
        return "file", value
    return "other", value


Source = FieldPath | Literal | Target
#: Where one key's value comes from: the first source that gives a value wins; none: left out.
Rule = tuple[Source, ...]


def _paths(*texts: str) -> Rule:
    return tuple(FieldPath.parse(text) for text in texts)


#: The default mapping (see the module docstring); labels come right after their keys.
DEFAULT_MAPPING: Final[Mapping[str, Rule]] = {
    "act": _paths("record.action", "record.actionType"),
    "outcome": _paths("record.effect", "record.outcome"),
    "suser": _paths("agent", "record.agentId"),
    "duser": _paths("record.userId", "record.user"),
    "rt": _paths("record.timestamp", "received_at"),
    "reason": _paths("record.reason"),
    "request": (Target("url"),),
    "fname": (Target("file"),),
    "deviceProcessName": _paths("record.toolName"),
    "externalId": _paths("id"),
    "msg": _paths("malformed.reason", "record.detail"),
    "cn1": _paths("record.sequence", "chain.sequence"),
    "cn1Label": (Literal("sequence"),),
    "cs1": _paths("agent", "record.agentId"),
    "cs1Label": (Literal("agentId"),),
    "cs2": _paths("record.matchedRule"),
    "cs2Label": (Literal("matchedRule"),),
    "cs3": (Target("other"),),
    "cs3Label": (Literal("resource"),),
    "cs4": _paths("record.sessionId"),
    "cs4Label": (Literal("sessionId"),),
    "cs5": _paths("record.hash"),
    "cs5Label": (Literal("recordHash"),),
    "cs6": _paths("chain.status"),
    "cs6Label": (Literal("chainStatus"),),
}


def parse_rule(value: object) -> Rule:
    """A mapping entry of the config: a field path (``"record.userId"``), a list of them (the
    first present wins; ``{ value = ... }`` may end it as a fallback), a literal (``{ value =
    "text" }`` or an integer), or ``false`` (leave the key out). ValueError("expected ...") for
    anything else."""
    if value is False:
        return ()
    if isinstance(value, str):
        return (FieldPath.parse(value),)
    if isinstance(value, dict):
        return (_literal(value),)
    if isinstance(value, list) and value:
        rule: list[Source] = []
        for item in value:
            if isinstance(item, str):
                rule.append(FieldPath.parse(item))
            elif isinstance(item, dict):
                rule.append(_literal(item))
            else:
                raise ValueError(_EXPECTED_RULE)
        return tuple(rule)
    raise ValueError(_EXPECTED_RULE)


_EXPECTED_RULE: Final = (
    'expected a field path ("record.userId"), a list of them, a literal ({ value = "text" }) '
    "or false"
)


def _literal(table: dict[str, Any]) -> Literal:
    value = table.get("value")
    if set(table) != {"value"} or isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError('expected a literal as { value = "text" } (or an integer)')
    return Literal(value)


def mapping_with(overrides: Mapping[str, Rule]) -> dict[str, Rule]:
    """``DEFAULT_MAPPING`` with ``overrides`` (an empty rule removes a key, and its default label
    unless that is configured too); every key checked."""
    merged = dict(DEFAULT_MAPPING)
    for key, rule in overrides.items():
        check_key(key)
        if rule:
            merged[key] = rule
        else:
            merged.pop(key, None)
            if f"{key}Label" not in overrides:
                merged.pop(f"{key}Label", None)
    return merged


# --- the header --------------------------------------------------------------------------------

ALLOWED: Final = frozenset(
    ["allow", "allowed", "permit", "permitted", "success", "succeeded", "ok", "granted", "approved"]
)
DENIED: Final = frozenset(
    ["deny", "denied", "block", "blocked", "reject", "rejected", "forbidden", "refused"]
)
FAILED: Final = frozenset(["fail", "failed", "failure", "error"])
_ALERT_SEVERITY: Final = {"low": 3, "medium": 5, "high": 7, "critical": 10}


@dataclass(frozen=True, slots=True)
class Description:
    """The header fields an envelope decides: Signature ID, Name, Severity."""

    signature_id: str
    name: str
    severity: int


def _first_text(record: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None:
            return text_of(value)
    return None


def describe(envelope: Mapping[str, Any]) -> Description:
    """Signature ID, Name and Severity of an envelope (see the module docstring)."""
    record = envelope.get("record")
    if not isinstance(record, dict):
        malformed = envelope.get("malformed")
        reason = malformed.get("reason") if isinstance(malformed, dict) else None
        return Description(MALFORMED_SIGNATURE, f"Malformed input: {reason or 'unknown'}", 5)
    action = _first_text(record, "action", "actionType") or "unknown"
    source = envelope.get("source")
    if isinstance(source, dict) and source.get("id") == ALERT_SOURCE_ID:
        return _describe_alert(action, record)
    effect = _first_text(record, "effect", "outcome")
    word = (effect or "").lower()
    if word in ALLOWED:
        return Description(action, f"Agent action allowed: {action}", 3)
    if word in DENIED:
        return Description(action, f"Agent action denied: {action}", 6)
    if word in FAILED:
        return Description(action, f"Agent action failed: {action}", 5)
    if effect:
        return Description(action, f"Agent action ({effect}): {action}", 4)
    return Description(action, f"Agent action: {action}", 4)


def _describe_alert(action: str, record: Mapping[str, Any]) -> Description:
    level = record.get("severity")
    status = _first_text(record, "status", "reason")
    if action in (CHAIN_ALERT, IDENTITY_ALERT):
        what = "Chain alert" if action == CHAIN_ALERT else "Identity alert"
        return Description(
            action, f"{what}: {status}" if status else what, 10 if level == "critical" else 9
        )
    if action == DELIVERY_ALERT:
        sink = _first_text(record, "sink") or "?"
        events = _first_text(record, "events") or "?"
        return Description(action, f"Delivery alert: sink {sink} refused {events} events", 7)
    if action == ARCHIVE_SEAL:
        return Description(action, "Archive sealed", 1)
    severity = _ALERT_SEVERITY.get(level, 5) if isinstance(level, str) else 5
    return Description(action, f"Alert: {action}", severity)


# --- the encoder -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    """An envelope as CEF: the line, and its severity (for the syslog header)."""

    line: str
    severity: int


#: A source compiled: its value in an envelope, given the envelope's target (``target_of``,
#: found once per envelope when the mapping has a ``Target``; else None).
_Get = Callable[[Mapping[str, Any], "tuple[str, Any] | None"], Any]
#: A key's rule compiled: its text in an envelope (given the target), or None/"" for none.
_Text = Callable[[Mapping[str, Any], "tuple[str, Any] | None"], "str | None"]
#: A key ready to run: the key, its text, its label's key, and the label: its text when it is
#: a literal, its compiled rule otherwise, None when the key has no label.
_Compiled = tuple[str, _Text, str, "str | _Text | None"]


_CONVERT: Final[dict[str, Callable[[Any], str | None]]] = {
    **dict.fromkeys(INTEGER_KEYS, integer_of),
    **dict.fromkeys(TIME_KEYS, millis_of),
}


def _getter(source: Source) -> _Get:
    """A fast function for ``source.get``: field paths of one to three steps (all the default
    mapping has) are read without a loop, a target from the envelope's target found once."""
    if isinstance(source, Target):
        kind = source.kind
        return lambda envelope, target: (
            target[1] if target is not None and target[0] == kind else None
        )
    if isinstance(source, Literal):
        value = source.value
        return lambda envelope, target: value
    parts = source.parts
    if len(parts) == 1:
        (only,) = parts
        return lambda envelope, target: envelope.get(only)
    if len(parts) == 2:
        first, second = parts

        def two(envelope: Mapping[str, Any], target: tuple[str, Any] | None) -> Any:
            inner = envelope.get(first)
            return inner.get(second) if type(inner) is dict else None

        return two
    if len(parts) == 3:
        first, second, third = parts

        def three(envelope: Mapping[str, Any], target: tuple[str, Any] | None) -> Any:
            inner = envelope.get(first)
            if type(inner) is not dict:
                return None
            inner = inner.get(second)
            return inner.get(third) if type(inner) is dict else None

        return three
    return lambda envelope, target: source.get(envelope)


_TARGET_GETTERS: Final = tuple(_getter(path) for path in TARGET_PATHS)


def _compile(rule: Rule, convert: Callable[[Any], str | None]) -> _Text:
    """A rule as one function: the text of the first source that gives one (a value ``convert``
    makes a non-empty text of)."""
    getters = tuple(_getter(source) for source in rule)
    if len(getters) == 1 and convert is text_of:
        (get,) = getters

        def one_text(envelope: Mapping[str, Any], target: tuple[str, Any] | None) -> str | None:
            value = get(envelope, target)
            return value if type(value) is str or value is None else text_of(value)

        return one_text

    if convert is text_of:

        def first_text(envelope: Mapping[str, Any], target: tuple[str, Any] | None) -> str | None:
            for get in getters:
                value = get(envelope, target)
                if type(value) is str:  # (text_of's first case, without the call)
                    if value:
                        return value
                elif value is not None and (text := text_of(value)):
                    return text
            return None

        return first_text

    def first(envelope: Mapping[str, Any], target: tuple[str, Any] | None) -> str | None:
        for get in getters:
            value = get(envelope, target)
            if value is not None:
                text = convert(value)
                if text:
                    return text
        return None

    return first


def _label_of(key: str, mapping: Mapping[str, Rule]) -> bool:
    """Whether ``key`` is the label of another key of ``mapping`` (``cs1Label`` of ``cs1``)."""
    return key.endswith("Label") and key[:-5] in mapping


class CefEncoder:
    """Envelopes as CEF lines, with ``vendor``, ``product``, ``version`` in the header and
    ``mapping`` for the extension (``mapping_with`` makes one from a config's overrides).

    The mapping is compiled once: each key's rule becomes one function (``_compile``), each
    label goes with its key (a literal label as its text), and an envelope's target resource is
    looked for once, only when a rule has a ``Target``."""

    def __init__(
        self,
        vendor: str,
        product: str,
        version: str,
        mapping: Mapping[str, Rule] = DEFAULT_MAPPING,
    ) -> None:
        for key in mapping:
            check_key(key)
        self.mapping = dict(mapping)
        head = (
            f"CEF:0|{escape_header(vendor, VENDOR_LIMIT)}|{escape_header(product, PRODUCT_LIMIT)}"
            f"|{escape_header(version, VERSION_LIMIT)}|"
        )
        self._head = head
        self._compiled = [
            self._compile_key(key) for key in self.mapping if not _label_of(key, self.mapping)
        ]
        self._targets = any(
            isinstance(source, Target) for rule in self.mapping.values() for source in rule
        )

    def _compile_key(self, key: str) -> _Compiled:
        text = _compile(self.mapping[key], _CONVERT.get(key, text_of))
        label_key = f"{key}Label"
        label: str | _Text | None = None
        if label_key in self.mapping:
            rule = self.mapping[label_key]
            convert = _CONVERT.get(label_key, text_of)
            if len(rule) == 1 and isinstance(rule[0], Literal):
                label = convert(rule[0].value) or None
            else:
                label = _compile(rule, convert)
        return key, text, label_key, label

    def extension(self, envelope: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The (key, text) pairs of an envelope, in mapping order; a label only with its key."""
        target = target_of(envelope) if self._targets else None
        pairs: list[tuple[str, str]] = []
        for key, get_text, label_key, label in self._compiled:
            text = get_text(envelope, target)
            if not text:
                continue
            pairs.append((key, text))
            if label is None:
                continue
            if isinstance(label, str):
                pairs.append((label_key, label))
            elif label_text := label(envelope, target):
                pairs.append((label_key, label_text))
        return pairs

    def encode(self, envelope: Mapping[str, Any]) -> Encoded:
        """One envelope (parsed) as a CEF line."""
        about = describe(envelope)
        pairs = " ".join([f"{key}={escape_value(text)}" for key, text in self.extension(envelope)])
        line = (
            f"{self._head}{escape_header(about.signature_id, SIGNATURE_ID_LIMIT)}"
            f"|{escape_header(about.name, NAME_LIMIT)}|{about.severity}|{pairs}"
        )
        return Encoded(line, about.severity)


__all__ = [
    "DEFAULT_MAPPING",
    "KEYS",
    "CefEncoder",
    "Description",
    "Encoded",
    "FieldPath",
    "Literal",
    "Rule",
    "Target",
    "describe",
    "escape_header",
    "escape_value",
    "format_cef",
    "mapping_with",
    "parse_rule",
    "truncate",
]
