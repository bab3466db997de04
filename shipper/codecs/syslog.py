"""Syslog messages: RFC 5424 and RFC 3164 (as real senders write it), parsed and formatted.

``parse(frame)`` takes one frame (from ``framing.AutoFramer``, ``OctetCountingFramer``, or one UDP
datagram) and returns a ``SyslogMessage`` or, for bytes that are not a syslog message, a
``shipper.events.Malformed`` with the reason and the raw bytes. It never raises on input bytes.

Common to both formats
======================

RFC 5424 section 6.2.1 (RFC 3164 section 4.1.1 says the same)::

    PRI             = "<" PRIVAL ">"
    PRIVAL          = 1*3DIGIT ; range 0 .. 191     (facility * 8 + severity)

A frame that does not start with ``<``, or whose PRIVAL is not 1 to 3 digits in 0..191, is
malformed. (RFC 3164 section 4.3.3 lets a relay assume ``<13>`` for a message without PRI; an audit
trail does not invent a priority, so such a frame is kept raw as malformed instead.) Facility and
severity are given by name: ``kern user mail daemon auth syslog lpr news uucp cron authpriv ftp ntp
security console solaris-cron local0..local7`` and ``emerg alert crit err warning notice info
debug`` (the names Vector and most tools use).

Trailing NUL, CR and LF bytes of a frame are terminators, not content: ``loggen -P`` puts an LF
inside its octet count and Python's ``SysLogHandler`` ends messages with a NUL. They are removed
before parsing (a ``Malformed`` keeps the frame exactly as received).

``msg`` is the MSG without a leading UTF-8 BOM, as text when it is valid UTF-8. Otherwise ``msg``
is the exact bytes and ``msg_error`` says why; ``record()`` then holds the text decoded with
replacement characters as ``msg``, the exact bytes as ``msg_b64`` and the reason as ``msg_error``.
``msg_bytes`` is always the exact MSG bytes (BOM removed), for callers that look for a JSON object.

RFC 5424 (chosen when PRI is followed by VERSION ``1`` and SP)
=============================================================

RFC 5424 section 6::

    SYSLOG-MSG      = HEADER SP STRUCTURED-DATA [SP MSG]
    HEADER          = PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID
    VERSION         = NONZERO-DIGIT 0*2DIGIT
    HOSTNAME        = NILVALUE / 1*255PRINTUSASCII
    APP-NAME        = NILVALUE / 1*48PRINTUSASCII
    PROCID          = NILVALUE / 1*128PRINTUSASCII
    MSGID           = NILVALUE / 1*32PRINTUSASCII
    TIMESTAMP       = NILVALUE / FULL-DATE "T" FULL-TIME
    FULL-DATE       = DATE-FULLYEAR "-" DATE-MONTH "-" DATE-MDAY
    FULL-TIME       = PARTIAL-TIME TIME-OFFSET
    PARTIAL-TIME    = TIME-HOUR ":" TIME-MINUTE ":" TIME-SECOND [TIME-SECFRAC]
    TIME-SECFRAC    = "." 1*6DIGIT
    TIME-OFFSET     = "Z" / TIME-NUMOFFSET
    TIME-NUMOFFSET  = ("+" / "-") TIME-HOUR ":" TIME-MINUTE
    STRUCTURED-DATA = NILVALUE / 1*SD-ELEMENT
    SD-ELEMENT      = "[" SD-ID *(SP SD-PARAM) "]"
    SD-PARAM        = PARAM-NAME "=" %d34 PARAM-VALUE %d34
    SD-ID           = SD-NAME
    PARAM-NAME      = SD-NAME
    PARAM-VALUE     = UTF-8-STRING ; characters '"', '\\' and ']' MUST be escaped.
    SD-NAME         = 1*32PRINTUSASCII ; except '=', SP, ']', %d34 (")
    MSG             = MSG-ANY / MSG-UTF8
    MSG-ANY         = *OCTET ; not starting with BOM
    MSG-UTF8        = BOM UTF-8-STRING
    BOM             = %xEF.BB.BF
    PRINTUSASCII    = %d33-126
    NILVALUE        = "-"

Decisions:

* Header fields must be PRINTUSASCII; ``-`` (NILVALUE) becomes None. The length limits (255, 48,
  128, 32, SD-NAME 32) are **not** enforced: a sender with a long host name still gets its
  records verified rather than archived as malformed. Everything else in the grammar is enforced
  and a violation yields ``Malformed`` naming the part.
* TIMESTAMP is validated (a real date, hour 0-23, minute 0-59, second 0-60 for leap seconds,
  offset up to 23:59) and kept as sent, with the sender's offset (not converted to UTC). The one
  normalization: a lower-case ``t`` or ``z`` becomes upper case. More than 6 fraction digits
  (nanoseconds, as some senders write) are accepted.
* ``sd`` maps SD-ID to ``{PARAM-NAME: value}`` with ``\\"``, ``\\\\`` and ``\\]`` unescaped; any
  other backslash stays (RFC 5424 section 6.3.3). An unescaped ``]`` inside the quotes is
  accepted (the quotes delimit the value). A PARAM-NAME may repeat within an element (RFC 5424
  section 6.3.3, e.g. ``origin ip``): its value is then the list of values in order. The same
  SD-ID must not appear twice (section 6.3.2); when it does, the elements are **merged** into one
  entry with the same rule (a repeated name becomes a list), so that a sender's SD quirk never
  costs the record its chain verification. Param values must be UTF-8.
* A VERSION other than ``1`` is not RFC 5424 as shipper knows it: the frame is read as RFC 3164
  (where no timestamp will be found, so all of it after PRI is the MSG).

RFC 3164 (everything else after PRI)
====================================

RFC 3164 section 4.1 describes the packet in prose, not ABNF::

    PRI HEADER MSG
    HEADER = TIMESTAMP SP HOSTNAME SP          ; TIMESTAMP = "Mmm dd hh:mm:ss", dd space-padded
    MSG    = TAG CONTENT                       ; TAG: up to 32 alphanumerics, then "[" or ":"

Real senders vary; what ``parse`` accepts, in order after PRI:

1. An optional Cisco IOS sequence number ``123: `` (``service sequence-numbers``), kept in
   ``sd["meta"]["sequenceId"]`` (RFC 5424 section 7.3.1), digits as sent.
2. TIMESTAMP: ``Mmm dd hh:mm:ss`` with the day padded by a space or not, optionally with a year
   before the time (``Mmm dd yyyy hh:mm:ss``), fractional seconds, and Cisco's ``*`` / ``.``
   clock-state prefix; or an RFC 3339 timestamp (rsyslog's ``RSYSLOG_ForwardFormat``), also
   without its zone (syslog-ng's ``loggen``: ``2026-11-23T20:04:38``). If none is
   found, RFC 3164 section 4.3.2 applies: everything after PRI (and sequence number) is the MSG,
   and timestamp, hostname and tag are None (RFC 3164 section 5.4, example 4).
3. Cisco style (a sequence number, or a colon right after the timestamp): no HOSTNAME or TAG
   follows; the rest is the MSG (``%SYS-5-CONFIG_I: Configured from console by vty0``).
4. Otherwise HOSTNAME and TAG: if the first word looks like a TAG (``name:`` or ``name[pid]:``)
   there is no hostname (``<PRI>Mmm dd hh:mm:ss tag: msg``, as ``logger --rfc3164`` and local
   senders write); else the first word is the HOSTNAME, and the second is the TAG if it looks like
   one; after a HOSTNAME, ``name[pid]`` without the colon is a TAG too (rsyslog's traditional
   forward formats write an RFC 5424 message's TAG so). A TAG gives ``app_name`` and, from
   ``[pid]``, ``procid``; the colon and one SP after it are not part of ``msg``. RFC 3164 example 3 (``Aug 24 05:34:00 CST 1987 mymachine myproc[10]:``)
   therefore reads as the RFC says: hostname ``CST``, the MSG starting at ``1987``.

Only printable ASCII words are taken as HOSTNAME or TAG. ``version`` and ``msgid`` are None.

The year is not in an RFC 3164 timestamp, and the sender's time zone never is. Without ``now``
the timestamp is kept as sent (``Oct 11 22:14:15``). With ``now`` (an aware datetime, passed in
by the caller: this module does no I/O and reads no clock) it is normalized to RFC 3339: the year
(when not sent) is the one that puts the timestamp closest to ``now``, and the offset is ``now``'s
(``Z`` for UTC), i.e. the caller's stated assumption about the sender's zone. An RFC 3339
timestamp is kept as sent in either case, except that one sent without a zone gets ``now``'s.

Speed
=====

``parse`` first tries one precompiled pattern (``_FAST``) for the usual form of each format:
RFC 5424 whose PARAM-VALUEs hold no ``\\``, ``"`` or ``]``; RFC 3164 ``TIMESTAMP [HOSTNAME]
TAG[[PID]]: MSG``; Cisco's ``[SEQ: ]TIMESTAMP[:] MSG`` (both RFC 3164 forms without ``now``).
The pattern checks every value the careful parser checks (PRI digits, PRINTUSASCII header
fields, the timestamp's ranges and month lengths, SD-NAME characters, a TAG's characters), so
what it matches needs only a few ``str`` splits and one ``SyslogMessage``. Everything else goes
to the careful parser, which decides, and says why when it rejects: escapes or ``]`` in a
PARAM-VALUE, a value starting with SP or ending with ``=``, a repeated SD-ID or PARAM-NAME,
invalid UTF-8, February 29, a lower-case ``t`` or ``z``, a HOSTNAME with ``:``, a timestamp
followed by no TAG, anything malformed. Both paths return the same result for every frame
(``tests/codecs/test_syslog.py`` compares them on the RFC examples, on edge cases and on
generated near-valid frames). ``bench/syslog.py`` measures the parser beside a tight loop that
does the minimum for the same result.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from shipper.events import Malformed

FACILITIES: Final = (
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    *(f"local{n}" for n in range(8)),
)
SEVERITIES: Final = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
BOM: Final = b"\xef\xbb\xbf"
NILVALUE: Final = "-"

SdValue = str | list[str]
StructuredData = dict[str, dict[str, SdValue]]


@dataclass(slots=True)
class SyslogMessage:
    """One parsed syslog message (field names as in RFC 5424 and the envelope's ``syslog``).

    Not frozen: a frozen dataclass costs microseconds per message to build, on the ingest path.
    """

    format: Literal["rfc5424", "rfc3164"]
    facility: str
    severity: str
    version: int | None
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    sd: StructuredData = field(default_factory=dict)
    msg_bytes: bytes = b""  # MSG exactly as sent, without a leading BOM

    @property
    def pri(self) -> int:
        """PRIVAL: facility code * 8 + severity code."""
        return FACILITIES.index(self.facility) * 8 + SEVERITIES.index(self.severity)

    @property
    def msg(self) -> str | bytes:
        """MSG as text, or its bytes when they are not valid UTF-8 (see ``msg_error``)."""
        try:
            return self.msg_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return self.msg_bytes

    @property
    def msg_error(self) -> str | None:
        """Why ``msg`` is bytes, or None when it is text."""
        try:
            self.msg_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"MSG is not valid UTF-8: {exc.reason} at byte {exc.start}"
        return None

    def envelope_syslog(self) -> dict[str, Any]:
        """The envelope's ``syslog`` object (``shipper.events``)."""
        return {
            "facility": self.facility,
            "severity": self.severity,
            "hostname": self.hostname,
            "app_name": self.app_name,
            "procid": self.procid,
            "msgid": self.msgid,
            "sd": self.sd,
        }

    def record(self) -> dict[str, Any]:
        """The ``record`` of a message whose MSG is not a JSON object: its fields, msg, timestamp
        (``RECORD_FIELDS`` names every key it can have)."""
        record = self.envelope_syslog()
        record["timestamp"] = self.timestamp
        msg = self.msg
        if isinstance(msg, str):
            record["msg"] = msg
        else:
            record["msg"] = msg.decode("utf-8", errors="replace")
            record["msg_b64"] = base64.b64encode(msg).decode("ascii")
            record["msg_error"] = self.msg_error
        return record


#: Every key of the ``record`` of a message whose MSG is not a JSON object (``record``).
RECORD_FIELDS: Final = frozenset(
    {
        "facility",
        "severity",
        "hostname",
        "app_name",
        "procid",
        "msgid",
        "sd",
        "timestamp",
        "msg",
        "msg_b64",
        "msg_error",
    }
)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_PRI = re.compile(rb"<([0-9]{1,3})>")
_PRINTUSASCII = re.compile(rb"[!-~]+")
_RFC3339 = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    rb"([Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_SD_NAME = re.compile(rb"[!#-<>-\\^-~]+")  # PRINTUSASCII except '=', ']' and '"'
_PARAM_VALUE = re.compile(rb'((?:[^"\\]|\\.)*)"', re.DOTALL)
_SD_UNESCAPE = re.compile(rb'\\(["\\\]])')
_MONTHS: Final = tuple(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_CISCO_SEQ = re.compile(rb"([0-9]+): ")
_BSD_TIMESTAMP = re.compile(
    rb"([*.]?)(" + b"|".join(_MONTHS) + rb") {1,2}([0-9]{1,2}) (?:([0-9]{4}) )?"
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(:?)(?: |$)"
)
_HEADER_5424 = re.compile(rb"([!-~]+) ([!-~]+) ([!-~]+) ([!-~]+) ([!-~]+) ")
# In RFC 3164 headers the zone may be missing (syslog-ng's loggen: 2026-11-23T20:04:38).
_RFC3339_3164 = re.compile(_RFC3339.pattern.replace(rb"([Zz]|", rb"([Zz]|$|(?= )|") + rb"(?: |$)")
_WORD = re.compile(rb"([!-~]+)(?: |$)")
_TAG = re.compile(rb"([!-9;-Z\\^-~]+)(?:\[([!-9;-Z\\^-~]*)\])?:(?: |$)")  # no ':' '[' ']'
# A TAG with a PID but no colon, after a HOSTNAME (rsyslog's traditional forward formats write
# the TAG of an RFC 5424 message like that: ``host openclaw[811] msg``).
_TAG_NO_COLON = re.compile(rb"([!-9;-Z\\^-~]+)\[([!-9;-Z\\^-~]*)\](?: |$)")


# The fast path's pattern: the usual forms of each format, all of whose values it checks (see
# "Speed" in the module docstring). What it matches, the careful parser reads the same way.
_FAST_TIMESTAMP = (
    rb"(?!0000)[0-9]{4}-"
    rb"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
    rb"|(?:0[13578]|1[02])-31)"  # every month-day but February 29 (the careful path checks it)
    rb"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
    rb"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
# STRUCTURED-DATA whose PARAM-VALUEs hold no '\', '"' or ']' (possessive: nothing to retry).
_FAST_SD = rb"(?:\[" + _SD_NAME.pattern + rb"(?: " + _SD_NAME.pattern + rb'="[^"\\\]]*+")*+\])++'
# RFC 3164 TIMESTAMP with its values in range, as _BSD_TIMESTAMP reads it (without the ':').
_FAST_BSD_TIMESTAMP = (
    rb"[*.]?(?:" + b"|".join(_MONTHS) + rb") {1,2}(?:0?[1-9]|[12][0-9]|3[01]) (?:[0-9]{4} )?"
    rb"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
)
_TAG_CHARS = rb"[!-9;-Z\\^-~]"  # PRINTUSASCII except ':', '[' and ']'
_FAST = re.compile(
    rb"<([0-9]{1,3})>(?:"
    # RFC 5424. Groups: 2 TIMESTAMP to MSGID (SP-separated), 3 STRUCTURED-DATA (None for '-').
    rb"1 ((?:-|" + _FAST_TIMESTAMP + rb") [!-~]+ [!-~]+ [!-~]+ [!-~]+) "
    rb"(?:-|(" + _FAST_SD + rb"))(?: (?:\xef\xbb\xbf)?|\Z)"  # then MSG, without its BOM
    # RFC 3164 with a TAG. Groups: 4 TIMESTAMP, 5 HOSTNAME (a word without ':', so never a TAG;
    # None when absent), 6 TAG, 7 PID.
    rb"|(" + _FAST_BSD_TIMESTAMP + rb") (?:([!-9;-~]+) )?"
    rb"(" + _TAG_CHARS + rb"+)(?:\[(" + _TAG_CHARS + rb"*)\])?:(?: |\Z)"
    # Cisco IOS (when it has a sequence number or a ':' after TIMESTAMP). Groups: 8 sequence
    # number, 9 TIMESTAMP, 10 ':'.
    rb"|(?:([0-9]+): )?(" + _FAST_BSD_TIMESTAMP + rb")(:)?(?: |\Z)"
    rb")"
)
#: PRIVAL as sent (1 to 3 digits, leading zeros included) -> (facility, severity), for 0..191.
_PRI_NAMES: Final = {
    text.encode("ascii"): (FACILITIES[value >> 3], SEVERITIES[value & 7])
    for value in range(192)
    for text in {str(value), f"{value:02d}", f"{value:03d}"}
}


class _Bad(Exception):
    """Internal: why a frame is malformed (never escapes ``parse``)."""


def parse(frame: bytes, *, now: datetime | None = None) -> SyslogMessage | Malformed:
    """The syslog message in ``frame``, or ``Malformed`` with the reason and the raw bytes.

    ``now`` (aware) lets RFC 3164 timestamps be completed to RFC 3339; see the module docstring.
    """
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    data = frame.rstrip(b"\r\n\0")
    # Fast path (see "Speed" in the module docstring); anything else goes to _parse_careful.
    head = _FAST.match(data)
    if head is not None and (pri := _PRI_NAMES.get(head[1])) is not None:
        facility, severity = pri
        header = head[2]
        if header is not None:  # RFC 5424
            sd: StructuredData = {}
            raw_sd = head[3]
            if raw_sd is not None:
                try:
                    text = raw_sd.decode("utf-8")
                except UnicodeDecodeError:
                    return _parse_careful(frame, data, now)  # it says where
                # No PARAM-VALUE here holds '"' or ']', so '][' only separates elements. Unless
                # a value starts with SP or ends with '=' ('=" ' occurs: left to the careful
                # parser), '="' only starts a value and '" ' only ends one before a PARAM-NAME.
                if '=" ' in text:
                    return _parse_careful(frame, data, now)
                elements = text[1:-1].split("][")
                for element in elements:
                    sd_id, _, params = element.partition(" ")
                    parts = params[:-1].replace('" ', '="').split('="')
                    pairs = iter(parts)
                    sd[sd_id] = values = dict(zip(pairs, pairs, strict=False))
                    if len(values) * 2 < len(parts) - 1:  # a repeated PARAM-NAME
                        return _parse_careful(frame, data, now)  # it makes a list of them
                if len(sd) != len(elements):  # a repeated SD-ID
                    return _parse_careful(frame, data, now)  # it merges the elements
            timestamp, hostname, app_name, procid, msgid = header.decode("ascii").split(" ")
            return SyslogMessage(
                "rfc5424",
                facility,
                severity,
                1,
                None if timestamp == "-" else timestamp,
                None if hostname == "-" else hostname,
                None if app_name == "-" else app_name,
                None if procid == "-" else procid,
                None if msgid == "-" else msgid,
                sd,
                data[head.end() :],
            )
        if now is None:  # (with now, the careful parser completes RFC 3164 timestamps)
            timestamp_3164 = head[4]
            if timestamp_3164 is not None:  # RFC 3164 with a TAG
                hostname_3164, tag, pid = head.group(5, 6, 7)
                return SyslogMessage(
                    "rfc3164",
                    facility,
                    severity,
                    None,
                    timestamp_3164.decode("ascii"),
                    None if hostname_3164 is None else hostname_3164.decode("ascii"),
                    tag.decode("ascii"),
                    pid.decode("ascii") if pid else None,
                    None,
                    {},
                    data[head.end() :],
                )
            sequence, timestamp_3164, colon = head.group(8, 9, 10)
            if sequence is not None or colon is not None:  # Cisco IOS
                return SyslogMessage(
                    "rfc3164",
                    facility,
                    severity,
                    None,
                    timestamp_3164.decode("ascii"),
                    None,
                    None,
                    None,
                    None,
                    {} if sequence is None else {"meta": {"sequenceId": sequence.decode("ascii")}},
                    data[head.end() :],
                )
    return _parse_careful(frame, data, now)


def _parse_careful(frame: bytes, data: bytes, now: datetime | None) -> SyslogMessage | Malformed:
    """``parse`` for any frame: every rule checked in turn, with a reason for the first broken."""
    try:
        if not data.startswith(b"<"):
            raise _Bad("no PRI: a syslog message starts with '<'")
        match = _PRI.match(data)
        if match is None:
            raise _Bad("bad PRI: expected '<', 1 to 3 digits and '>'")
        prival = int(match[1])
        if prival > 191:
            raise _Bad(f"PRI out of range 0..191: {prival}")
        facility = FACILITIES[prival >> 3]
        severity = SEVERITIES[prival & 7]
        pos = match.end()
        if data.startswith(b"1 ", pos):
            return _parse_5424(data, pos + 2, facility, severity)
        return _parse_3164(data, pos, facility, severity, now)
    except _Bad as exc:
        return Malformed.of(str(exc), frame)


def _header_field(value: bytes, name: str) -> str | None:
    if not value:
        raise _Bad(f"RFC 5424: empty {name} (two SP in a row)")
    if _PRINTUSASCII.fullmatch(value) is None:
        raise _Bad(f"RFC 5424: {name} is not printable US-ASCII")
    text = value.decode("ascii")
    return None if text == NILVALUE else text


_DAYS_IN_MONTH: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _check_rfc3339(match: re.Match[bytes]) -> str | None:
    """The timestamp normalized (upper-case T and Z), or None when its values are out of range."""
    year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
    if hour > 23 or minute > 59 or second > 60 or not 1 <= month <= 12 or year == 0:
        return None
    if not 1 <= day <= _DAYS_IN_MONTH[month]:
        return None
    if month == 2 and day == 29 and (year % 4 or (year % 100 == 0 and year % 400)):
        return None
    if match[9] is not None and (int(match[9]) > 23 or int(match[10]) > 59):
        return None
    return match.string[match.start() : match.end(8)].decode("ascii").upper().rstrip()


def _parse_5424(data: bytes, pos: int, facility: str, severity: str) -> SyslogMessage:
    fast = _HEADER_5424.match(data, pos)
    if fast is not None:  # the common case: five printable fields, each alone
        raw_timestamp, raw_hostname, raw_app, raw_procid, raw_msgid = fast.groups()
        hostname = None if raw_hostname == b"-" else raw_hostname.decode("ascii")
        app_name = None if raw_app == b"-" else raw_app.decode("ascii")
        procid = None if raw_procid == b"-" else raw_procid.decode("ascii")
        msgid = None if raw_msgid == b"-" else raw_msgid.decode("ascii")
        timestamp = None
        if raw_timestamp != b"-":
            match = _RFC3339.fullmatch(raw_timestamp)
            timestamp = None if match is None else _check_rfc3339(match)
            if timestamp is None:
                raise _Bad(f"RFC 5424: bad TIMESTAMP {raw_timestamp[:40]!r}")
        return _finish_5424(data[fast.end() :], facility, severity, timestamp, hostname,
                            app_name, procid, msgid)  # fmt: skip
    parts = data[pos:].split(b" ", 5)
    if len(parts) < 6:
        raise _Bad(
            "RFC 5424: header ends early: expected TIMESTAMP HOSTNAME APP-NAME PROCID MSGID "
            "STRUCTURED-DATA after VERSION"
        )
    raw_timestamp, raw_hostname, raw_app, raw_procid, raw_msgid, rest = parts
    timestamp = _header_field(raw_timestamp, "TIMESTAMP")
    if timestamp is not None:
        match = _RFC3339.fullmatch(raw_timestamp)
        timestamp = None if match is None else _check_rfc3339(match)
        if timestamp is None:
            raise _Bad(f"RFC 5424: bad TIMESTAMP {raw_timestamp[:40]!r}")
    hostname = _header_field(raw_hostname, "HOSTNAME")
    app_name = _header_field(raw_app, "APP-NAME")
    procid = _header_field(raw_procid, "PROCID")
    msgid = _header_field(raw_msgid, "MSGID")
    return _finish_5424(rest, facility, severity, timestamp, hostname, app_name, procid, msgid)


def _finish_5424(
    rest: bytes,
    facility: str,
    severity: str,
    timestamp: str | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
) -> SyslogMessage:
    """STRUCTURED-DATA and MSG, after the header."""
    sd, end = _parse_sd(rest)
    if end == len(rest):
        msg = b""
    elif rest[end] == 0x20:
        msg = rest[end + 1 :]
        if msg.startswith(BOM):
            msg = msg[3:]
    else:
        raise _Bad(f"RFC 5424: expected SP or end after STRUCTURED-DATA at {rest[end:][:20]!r}")
    return SyslogMessage(
        "rfc5424", facility, severity, 1, timestamp, hostname, app_name, procid, msgid, sd, msg
    )


def _add(params: dict[str, SdValue], name: str, value: str) -> None:
    old = params.get(name)
    if old is None:
        params[name] = value
    elif isinstance(old, list):
        old.append(value)
    else:
        params[name] = [old, value]


def _parse_sd(data: bytes) -> tuple[StructuredData, int]:
    """STRUCTURED-DATA at the start of ``data``: the mapping and the offset just after it."""
    if data.startswith(b"-"):
        return {}, 1
    if not data.startswith(b"["):
        raise _Bad("RFC 5424: STRUCTURED-DATA must be '-' or start with '['")
    sd: StructuredData = {}
    pos = 0
    while data.startswith(b"[", pos):
        name = _SD_NAME.match(data, pos + 1)
        if name is None:
            raise _Bad(f"RFC 5424: bad SD-ID at offset {pos + 1} of STRUCTURED-DATA")
        sd_id = name[0].decode("ascii")
        params = sd.setdefault(sd_id, {})
        pos = name.end()
        while True:
            if data.startswith(b"]", pos):
                pos += 1
                break
            if not data.startswith(b" ", pos):
                raise _Bad(f"RFC 5424: expected SP or ']' in SD-ELEMENT {sd_id!r}")
            param = _SD_NAME.match(data, pos + 1)
            if param is None:
                raise _Bad(f"RFC 5424: bad PARAM-NAME in SD-ELEMENT {sd_id!r}")
            pos = param.end()
            if not data.startswith(b'="', pos):
                raise _Bad(f"RFC 5424: expected '=\"' after PARAM-NAME in SD-ELEMENT {sd_id!r}")
            value = _PARAM_VALUE.match(data, pos + 2)
            if value is None:
                raise _Bad(f"RFC 5424: unterminated PARAM-VALUE in SD-ELEMENT {sd_id!r}")
            pos = value.end()
            try:
                text = _SD_UNESCAPE.sub(rb"\1", value[1]).decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(f"RFC 5424: PARAM-VALUE in {sd_id!r} is not valid UTF-8") from None
            _add(params, param[0].decode("ascii"), text)
    return sd, pos


def _normalize_bsd(match: re.Match[bytes], now: datetime | None) -> str | None:
    """An RFC 3164 timestamp as RFC 3339 (see module docstring), or None if it cannot be."""
    month = _MONTHS.index(match[2]) + 1
    day, hour, minute, second = int(match[3]), int(match[5]), int(match[6]), int(match[7])
    if not 1 <= day <= 31 or hour > 23 or minute > 59 or second > 60:
        return None
    if now is None:
        return match[0].rstrip(b": ").decode("ascii")
    tz = now.tzinfo
    candidates: list[datetime] = []
    years = [int(match[4])] if match[4] else [now.year - 1, now.year, now.year + 1]
    for year in years:
        try:
            candidates.append(datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz))
        except ValueError:
            continue
    if not candidates:
        return None
    moment = min(candidates, key=lambda c: abs(c - now))
    fraction = (match[8] or b"").decode("ascii")
    # %Y writes year 1 as "1": RFC 3339 needs four digits
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M}:{second:02d}{fraction}{_zone(moment)}"


def _zone(moment: datetime) -> str:
    """An aware datetime's offset as RFC 3339 writes it (``Z`` for UTC)."""
    offset = moment.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_3164(
    data: bytes, pos: int, facility: str, severity: str, now: datetime | None
) -> SyslogMessage:
    sd: StructuredData = {}
    cisco = False
    seq = _CISCO_SEQ.match(data, pos)
    if seq is not None:
        sd["meta"] = {"sequenceId": seq[1].decode("ascii")}
        pos = seq.end()
        cisco = True
    timestamp: str | None = None
    bsd = _BSD_TIMESTAMP.match(data, pos)
    if bsd is not None:
        timestamp = _normalize_bsd(bsd, now)
        if timestamp is not None:
            pos = bsd.end()
            cisco = cisco or bool(bsd[9])
    else:
        iso = _RFC3339_3164.match(data, pos)
        if iso is not None:
            timestamp = _check_rfc3339(iso)
            if timestamp is not None:
                pos = iso.end()
                if not iso[8] and now is not None:  # no zone sent: the caller's assumption
                    timestamp += _zone(now)
    hostname = app_name = procid = None
    if timestamp is not None and not cisco:
        tag = _TAG.match(data, pos)
        if tag is None:
            word = _WORD.match(data, pos)
            if word is not None:
                hostname = word[1].decode("ascii")
                pos = word.end()
                tag = _TAG.match(data, pos) or _TAG_NO_COLON.match(data, pos)
        if tag is not None:
            app_name = tag[1].decode("ascii")
            procid = tag[2].decode("ascii") if tag[2] else None
            pos = tag.end()
    return SyslogMessage(
        "rfc3164",
        facility,
        severity,
        None,
        timestamp,
        hostname,
        app_name,
        procid,
        None,
        sd,
        data[pos:],
    )


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _prival(facility: str | int, severity: str | int) -> int:
    code = FACILITIES.index(facility) if isinstance(facility, str) else facility
    level = SEVERITIES.index(severity) if isinstance(severity, str) else severity
    if not 0 <= code < len(FACILITIES) or not 0 <= level < len(SEVERITIES):
        raise ValueError(f"facility {facility!r} or severity {severity!r} out of range")
    return code * 8 + level


def _rfc3339(moment: datetime) -> str:
    if moment.utcoffset() is None:
        raise ValueError("timestamp must be an aware datetime")
    text = moment.isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _field(value: str | None, name: str) -> bytes:
    if value is None:
        return b"-"
    if value == NILVALUE or _PRINTUSASCII.fullmatch(value.encode("utf-8")) is None:
        raise ValueError(f"{name} must be printable US-ASCII, non-empty and not '-': {value!r}")
    return value.encode("ascii")


def _sd_escape(value: str) -> bytes:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]").encode("utf-8")


def _sd_name(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if _SD_NAME.fullmatch(raw) is None:
        raise ValueError(f"{what} must be printable US-ASCII without '=', ']', '\"': {value!r}")
    return raw


def format_sd(sd: Mapping[str, Mapping[str, str | Sequence[str]]] | None) -> bytes:
    """STRUCTURED-DATA for ``sd`` (a list value repeats its PARAM-NAME), ``-`` when empty."""
    if not sd:
        return b"-"
    out = bytearray()
    for sd_id, params in sd.items():
        out += b"[" + _sd_name(sd_id, "SD-ID")
        for name, value in params.items():
            raw_name = _sd_name(name, "PARAM-NAME")
            for item in [value] if isinstance(value, str) else value:
                out += b" " + raw_name + b'="' + _sd_escape(item) + b'"'
        out += b"]"
    return bytes(out)


def format_rfc5424(
    facility: str | int,
    severity: str | int,
    *,
    timestamp: datetime | str | None = None,
    hostname: str | None = None,
    app_name: str | None = None,
    procid: str | None = None,
    msgid: str | None = None,
    sd: Mapping[str, Mapping[str, str | Sequence[str]]] | None = None,
    msg: str | bytes | None = None,
    bom: bool = True,
) -> bytes:
    """One RFC 5424 SYSLOG-MSG (no framing). None is NILVALUE; a str MSG gets a BOM if ``bom``.

    Raises ``ValueError`` for a value the format cannot carry (a header field with SP or
    non-ASCII, a naive datetime, an invalid timestamp string).
    """
    if isinstance(timestamp, datetime):
        stamp = _rfc3339(timestamp).encode("ascii")
    elif timestamp is None:
        stamp = b"-"
    else:
        match = _RFC3339.fullmatch(timestamp.encode("utf-8"))
        if match is None or _check_rfc3339(match) is None:
            raise ValueError(f"timestamp is not RFC 3339: {timestamp!r}")
        stamp = timestamp.encode("ascii")
    head = b"<%d>1 %b %b %b %b %b %b" % (
        _prival(facility, severity),
        stamp,
        _field(hostname, "hostname"),
        _field(app_name, "app_name"),
        _field(procid, "procid"),
        _field(msgid, "msgid"),
        format_sd(sd),
    )
    if msg is None:
        return head
    if isinstance(msg, str):
        return head + b" " + (BOM if bom else b"") + msg.encode("utf-8")
    return head + b" " + msg


def format_rfc3164(
    facility: str | int,
    severity: str | int,
    *,
    timestamp: datetime,
    hostname: str | None = None,
    app_name: str | None = None,
    procid: str | None = None,
    msg: str | bytes = b"",
) -> bytes:
    """``<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`` (the timestamp's wall-clock time, no zone).

    Without ``hostname`` the hostname is left out (the local-sender variant); without
    ``app_name`` there is no TAG. Raises ``ValueError`` for a hostname or tag the format cannot
    carry.
    """
    month = _MONTHS[timestamp.month - 1]
    out = b"<%d>%b %2d %02d:%02d:%02d" % (
        _prival(facility, severity),
        month,
        timestamp.day,
        timestamp.hour,
        timestamp.minute,
        timestamp.second,
    )
    if hostname is not None:
        out += b" " + _field(hostname, "hostname")
    if app_name is not None:
        tag = app_name.encode("utf-8")
        pid = b"" if procid is None else b"[" + procid.encode("utf-8") + b"]"
        if _TAG.fullmatch(tag + pid + b":") is None:
            raise ValueError(f"app_name/procid cannot form an RFC 3164 TAG: {app_name!r}")
        out += b" " + tag + pid + b":"
    body = msg.encode("utf-8") if isinstance(msg, str) else msg
    return out + b" " + body


__all__ = [
    "BOM",
    "FACILITIES",
    "SEVERITIES",
    "SyslogMessage",
    "format_rfc3164",
    "format_rfc5424",
    "format_sd",
    "parse",
]
