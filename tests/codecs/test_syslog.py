"""Tests of the syslog parser and formatters: RFC 5424, RFC 3164 and real-world variants."""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shipper.codecs.syslog import (
    _FAST,
    BOM,
    FACILITIES,
    SEVERITIES,
    SyslogMessage,
    _parse_careful,
    format_rfc3164,
    format_rfc5424,
    format_sd,
    parse,
)
from shipper.events import Malformed

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def parsed(frame: bytes, now: datetime | None = None) -> SyslogMessage:
    """``frame`` parsed, failing the test if it is malformed."""
    message = parse(frame, now=now)
    assert isinstance(message, SyslogMessage), message
    return message


def rfc5424(
    facility: str,
    severity: str,
    timestamp: str | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
    sd: dict[str, dict[str, str | list[str]]],
    msg: bytes,
) -> SyslogMessage:
    """The SyslogMessage expected for an RFC 5424 frame."""
    return SyslogMessage(
        "rfc5424", facility, severity, 1, timestamp, hostname, app_name, procid, msgid, sd, msg
    )


def rfc3164(
    facility: str,
    severity: str,
    timestamp: str | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msg: bytes,
    sd: dict[str, dict[str, str | list[str]]] | None = None,
) -> SyslogMessage:
    """The SyslogMessage expected for an RFC 3164 frame."""
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
        sd or {},
        msg,
    )


# ---- RFC 5424 section 6.5 ------------------------------------------------------------------

EXAMPLE_SD: dict[str, dict[str, str | list[str]]] = {
    "exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"}
}
RFC5424_EXAMPLES = [
    pytest.param(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
        b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8",
        rfc5424(
            "auth",
            "crit",
            "2003-10-11T22:14:15.003Z",
            "mymachine.example.com",
            "su",
            None,
            "ID47",
            {},
            b"'su root' failed for lonvick on /dev/pts/8",
        ),
        id="example-1",
    ),
    pytest.param(
        b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - "
        b"%% It's time to make the do-nuts.",
        rfc5424(
            "local4",
            "notice",
            "2003-08-24T05:14:15.000003-07:00",
            "192.0.2.1",
            "myproc",
            "8710",
            None,
            {},
            b"%% It's time to make the do-nuts.",
        ),
        id="example-2",
    ),
    pytest.param(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
        b"\xef\xbb\xbfAn application event log entry...",
        rfc5424(
            "local4",
            "notice",
            "2003-10-11T22:14:15.003Z",
            "mymachine.example.com",
            "evntslog",
            None,
            "ID47",
            EXAMPLE_SD,
            b"An application event log entry...",
        ),
        id="example-3",
    ),
    pytest.param(
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
        b'[examplePriority@32473 class="high"]',
        rfc5424(
            "local4",
            "notice",
            "2003-10-11T22:14:15.003Z",
            "mymachine.example.com",
            "evntslog",
            None,
            "ID47",
            {**EXAMPLE_SD, "examplePriority@32473": {"class": "high"}},
            b"",
        ),
        id="example-4",
    ),
]


@pytest.mark.parametrize(("frame", "expected"), RFC5424_EXAMPLES)
def test_rfc5424_examples(frame: bytes, expected: SyslogMessage) -> None:
    """The four examples of RFC 5424 section 6.5 parse to exactly their fields."""
    assert parse(frame) == expected
    assert parse(frame, now=NOW) == expected  # now only matters for RFC 3164


@pytest.mark.parametrize(("frame", "expected"), RFC5424_EXAMPLES)
def test_rfc5424_examples_with_terminators_and_prefixes(
    frame: bytes, expected: SyslogMessage
) -> None:
    """A trailing LF/NUL is dropped, and no prefix of an example makes the parser raise."""
    for suffix in (b"\n", b"\r\n", b"\0", b"\0\n"):
        assert parse(frame + suffix) == expected
    for end in range(len(frame)):
        assert isinstance(parse(frame[:end]), SyslogMessage | Malformed)


def test_rfc5424_trailing_data_goes_into_msg() -> None:
    """Bytes after a complete message are part of its MSG (MSG runs to the end of the frame)."""
    message = parsed(b"<13>1 - - - - - - hello <14>1 - - - - - - again")
    assert message.msg == "hello <14>1 - - - - - - again"


def test_rfc5424_all_nilvalues() -> None:
    """NILVALUE in every header field and in STRUCTURED-DATA gives None and an empty sd."""
    assert parse(b"<0>1 - - - - - -") == rfc5424(
        "kern", "emerg", None, None, None, None, None, {}, b""
    )
    assert parsed(b"<191>1 - - - - - - ").msg == ""
    assert parsed(b"<191>1 - - - - - -").facility == "local7"


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        pytest.param(b"2026-11-22T10:45:23Z", "2026-11-22T10:45:23Z", id="no-fraction"),
        pytest.param(b"2026-11-22t10:45:23.5z", "2026-11-22T10:45:23.5Z", id="lower-case"),
        pytest.param(b"2026-11-22T10:45:23.123456789+05:30", None, id="nanoseconds"),
        pytest.param(b"2016-12-31T23:59:60Z", None, id="leap-second"),
        pytest.param(b"2024-02-29T00:00:00-00:00", None, id="leap-day"),
    ],
)
def test_rfc5424_timestamps_kept_as_sent(stamp: bytes, expected: str | None) -> None:
    """Valid RFC 3339 timestamps are kept as sent, with only T and Z upper-cased."""
    message = parsed(b"<13>1 " + stamp + b" h a p m - x")
    assert message.timestamp == (expected or stamp.decode())


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(b"hello", "no PRI", id="no-pri"),
        pytest.param(b"", "no PRI", id="empty"),
        pytest.param(b" <13>1 - - - - - -", "no PRI", id="leading-space"),
        pytest.param(b"<>1 - - - - - -", "bad PRI", id="empty-pri"),
        pytest.param(b"<1234>1 - - - - - -", "bad PRI", id="four-digits"),
        pytest.param(b"<13", "bad PRI", id="unterminated-pri"),
        pytest.param(b"<x>hello", "bad PRI", id="letter-pri"),
        pytest.param(b"<192>1 - - - - - -", "PRI out of range 0..191: 192", id="pri-192"),
        pytest.param(b"<999>hello", "PRI out of range", id="pri-999"),
        pytest.param(b"<13>1 - - - - -", "header ends early", id="no-sd"),
        pytest.param(b"<13>1 ", "header ends early", id="only-version"),
        pytest.param(b"<13>1 -  - - - - -", "empty HOSTNAME", id="double-space"),
        pytest.param(b"<13>1 - h\xc3\xa9 - - - -", "HOSTNAME is not printable", id="utf8-host"),
        pytest.param(b"<13>1 - h a\x01 - - -", "APP-NAME is not printable", id="control"),
        pytest.param(b"<13>1 2003-13-11T22:14:15Z h a p m -", "bad TIMESTAMP", id="month-13"),
        pytest.param(b"<13>1 2003-02-30T22:14:15Z h a p m -", "bad TIMESTAMP", id="feb-30"),
        pytest.param(b"<13>1 2003-02-03T24:00:00Z h a p m -", "bad TIMESTAMP", id="hour-24"),
        pytest.param(b"<13>1 2003-02-03T22:14:15 h a p m -", "bad TIMESTAMP", id="no-offset"),
        pytest.param(b"<13>1 2003-02-03T22:14:15+24:00 h a p m -", "bad TIMESTAMP", id="off-24"),
        pytest.param(b"<13>1 2003-02-03T22:14:15. h a p m -", "bad TIMESTAMP", id="empty-frac"),
        pytest.param(b"<13>1 - - - - - x", "STRUCTURED-DATA must be", id="sd-not-bracket"),
        pytest.param(b"<13>1 - - - - - [", "bad SD-ID", id="sd-open-only"),
        pytest.param(b'<13>1 - - - - - [a b="c"', "expected SP or ']'", id="sd-unclosed"),
        pytest.param(b'<13>1 - - - - - [a b="c]', "unterminated PARAM-VALUE", id="value-open"),
        pytest.param(b"<13>1 - - - - - [a b=c]", "expected '=\"'", id="unquoted-value"),
        pytest.param(b'<13>1 - - - - - [a ="c"]', "bad PARAM-NAME", id="empty-param-name"),
        pytest.param(b'<13>1 - - - - - [a=b c="d"]', "expected SP or ']'", id="sd-id-with-eq"),
        pytest.param(b'<13>1 - - - - - [a b="\xff"]', "not valid UTF-8", id="value-not-utf8"),
        pytest.param(b"<13>1 - - - - - [a]x", "expected SP or end", id="after-sd"),
        pytest.param(b"<13>1 - - - - - -x", "expected SP or end", id="after-nil-sd"),
    ],
)
def test_malformed_frames_say_why_and_keep_the_bytes(frame: bytes, reason: str) -> None:
    """Input that is not a syslog message yields Malformed with the reason and the exact bytes."""
    result = parse(frame + b"\n")
    assert isinstance(result, Malformed), result
    assert reason in result.reason
    assert result.raw == frame + b"\n"
    assert result.size == len(frame) + 1


def test_rfc5424_sd_escapes_and_repeats() -> None:
    """Escaped '"', '\\' and ']' are unescaped, other backslashes kept, repeats become lists."""
    frame = (
        b'<13>1 - - - - - [x@1 q="a\\"b" s="c\\\\d" r="e\\]f" n="g\\nh" u="]" e=""]'
        b'[origin ip="192.0.2.1" ip="192.0.2.2"][x@1 q="again" z="\xc3\xa9"] m'
    )
    message = parsed(frame)
    assert message.sd == {
        "x@1": {
            "q": ['a"b', "again"],
            "s": "c\\d",
            "r": "e]f",
            "n": "g\\nh",
            "u": "]",
            "e": "",
            "z": "\u00e9",
        },
        "origin": {"ip": ["192.0.2.1", "192.0.2.2"]},
    }
    assert message.msg == "m"


def test_bom_is_stripped_once() -> None:
    """Only one leading BOM is removed from MSG; a BOM elsewhere is content."""
    assert parsed(b"<13>1 - - - - - - " + BOM + BOM + b"x").msg == "\ufeffx"
    assert parsed(b"<13>1 - - - - - - x" + BOM).msg == "x\ufeff"


def test_msg_not_utf8_keeps_the_bytes_with_a_reason() -> None:
    """A MSG that is not UTF-8 stays bytes, with a reason, and the record carries it as base64."""
    message = parsed(b"<13>1 - h - - - - caf\xe9 ok")
    assert message.msg == b"caf\xe9 ok"
    assert message.msg_error is not None
    assert "not valid UTF-8" in message.msg_error
    record = message.record()
    assert record["msg"] == "caf\ufffd ok"
    assert base64.b64decode(record["msg_b64"]) == b"caf\xe9 ok"
    assert record["msg_error"] == message.msg_error
    assert parsed(b"<13>1 - h - - - - ok").msg_error is None


def test_envelope_and_record() -> None:
    """envelope_syslog() is the envelope's syslog object; record() adds timestamp and msg."""
    message = parsed(
        b'<38>1 2026-11-22T10:45:23Z host-7 openclaw 811 audit [a@1 k="v"] ' + BOM + b"did it"
    )
    syslog = {
        "facility": "auth",
        "severity": "info",
        "hostname": "host-7",
        "app_name": "openclaw",
        "procid": "811",
        "msgid": "audit",
        "sd": {"a@1": {"k": "v"}},
    }
    assert message.envelope_syslog() == syslog
    assert message.record() == {**syslog, "timestamp": "2026-11-22T10:45:23Z", "msg": "did it"}
    assert message.pri == 38
    assert message.msg_bytes == b"did it"


def test_other_versions_are_read_as_rfc3164() -> None:
    """A VERSION other than 1 is not RFC 5424: all after PRI is the MSG of an RFC 3164 message."""
    assert parse(b"<13>2 2003-10-11T22:14:15Z h a p m - x") == rfc3164(
        "user", "notice", None, None, None, None, b"2 2003-10-11T22:14:15Z h a p m - x"
    )


def test_now_must_be_aware() -> None:
    """A naive reference time is a caller error, refused rather than guessed at."""
    with pytest.raises(ValueError, match="aware"):
        parse(b"<13>Oct 11 22:14:15 host x", now=datetime(2026, 1, 1))


# ---- RFC 3164 section 5.4 and real-world variants -------------------------------------------

DONUTS = (
    b"%% It's time to make the do-nuts.  %%  Ingredients: Mix=OK, Jelly=OK # Devices: Mixer=OK, "
    b"Jelly_Injector=OK, Frier=OK # Transport: Conveyer1=OK, Conveyer2=OK # %%"
)
FOLKS = b"1990 Oct 22 10:52:01 TZ-6 scapegoat.dmz.example.org 10.1.2.3 sched[0]: That's All Folks!"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
            rfc3164(
                "auth",
                "crit",
                "Oct 11 22:14:15",
                "mymachine",
                "su",
                None,
                b"'su root' failed for lonvick on /dev/pts/8",
            ),
            id="example-1",
        ),
        pytest.param(
            b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!",
            rfc3164("user", "notice", "Feb  5 17:32:18", "10.0.0.99", None, None, b"Use the BFG!"),
            id="example-2-as-relayed",
        ),
        pytest.param(
            b"<165>Aug 24 05:34:00 CST 1987 mymachine myproc[10]: " + DONUTS,
            rfc3164(
                "local4",
                "notice",
                "Aug 24 05:34:00",
                "CST",
                None,
                None,
                b"1987 mymachine myproc[10]: " + DONUTS,
            ),
            id="example-3",
        ),
        pytest.param(
            b"<0>" + FOLKS,
            rfc3164("kern", "emerg", None, None, None, None, FOLKS),
            id="example-4",
        ),
        pytest.param(
            b"<0>Oct 22 10:52:12 scapegoat " + FOLKS,
            rfc3164("kern", "emerg", "Oct 22 10:52:12", "scapegoat", None, None, FOLKS),
            id="example-4-as-relayed",
        ),
    ],
)
def test_rfc3164_examples(frame: bytes, expected: SyslogMessage) -> None:
    """The examples of RFC 3164 section 5.4 parse as the RFC reads them."""
    assert parse(frame) == expected
    assert parse(frame + b"\n") == expected


def test_rfc3164_example_2_without_pri_is_malformed() -> None:
    """RFC 3164 example 2 as sent (no PRI) is kept raw as malformed, not given an invented PRI."""
    result = parse(b"Use the BFG!")
    assert result == Malformed("no PRI: a syslog message starts with '<'", b"Use the BFG!", 12)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(
            b"<13>Oct  1 02:03:04 host sshd[4242]: Accepted publickey",
            rfc3164(
                "user", "notice", "Oct  1 02:03:04", "host", "sshd", "4242", b"Accepted publickey"
            ),
            id="space-padded-day-and-pid",
        ),
        pytest.param(
            b"<13>Oct 1 02:03:04 host app: x",
            rfc3164("user", "notice", "Oct 1 02:03:04", "host", "app", None, b"x"),
            id="unpadded-day",
        ),
        pytest.param(
            b"<86>Nov  3 11:59:01 CRON[123]: pam_unix(cron:session): opened",
            rfc3164(
                "authpriv",
                "info",
                "Nov  3 11:59:01",
                None,
                "CRON",
                "123",
                b"pam_unix(cron:session): opened",
            ),
            id="no-hostname",
        ),
        pytest.param(
            b"<14>Nov  3 11:59:01 myhost postfix/smtpd[77]: connect",
            rfc3164("user", "info", "Nov  3 11:59:01", "myhost", "postfix/smtpd", "77", b"connect"),
            id="slash-in-tag",
        ),
        pytest.param(
            b"<14>Nov  3 11:59:01 myhost just some text",
            rfc3164("user", "info", "Nov  3 11:59:01", "myhost", None, None, b"just some text"),
            id="no-tag",
        ),
        pytest.param(
            b"<14>Nov  3 11:59:01 myhost tag:",
            rfc3164("user", "info", "Nov  3 11:59:01", "myhost", "tag", None, b""),
            id="empty-content",
        ),
        pytest.param(
            b"<14>Nov  3 11:59:01 fe80::1 tag: x",
            rfc3164("user", "info", "Nov  3 11:59:01", "fe80::1", "tag", None, b"x"),
            id="ipv6-host",
        ),
        pytest.param(
            b"<189>123: *Mar  1 18:46:11.123: %SYS-5-CONFIG_I: Configured from console by vty0",
            rfc3164(
                "local7",
                "notice",
                "*Mar  1 18:46:11.123",
                None,
                None,
                None,
                b"%SYS-5-CONFIG_I: Configured from console by vty0",
                {"meta": {"sequenceId": "123"}},
            ),
            id="cisco-sequence-number",
        ),
        pytest.param(
            b"<187>Mar  1 2024 18:46:11: %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
            rfc3164(
                "local7",
                "err",
                "Mar  1 2024 18:46:11",
                None,
                None,
                None,
                b"%LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
            ),
            id="cisco-with-year",
        ),
        pytest.param(
            b"<189>000042: %SYS-5-CONFIG_I: Configured",
            rfc3164(
                "local7",
                "notice",
                None,
                None,
                None,
                None,
                b"%SYS-5-CONFIG_I: Configured",
                {"meta": {"sequenceId": "000042"}},
            ),
            id="cisco-without-timestamp",
        ),
        pytest.param(
            b"<13>2003-08-24T05:14:15.5-07:00 localhost snarf[1]: x",
            rfc3164(
                "user", "notice", "2003-08-24T05:14:15.5-07:00", "localhost", "snarf", "1", b"x"
            ),
            id="rsyslog-forward-format",
        ),
        pytest.param(
            b"<13>Oct 32 22:14:15 host x: y",
            rfc3164("user", "notice", None, None, None, None, b"Oct 32 22:14:15 host x: y"),
            id="day-32-is-no-timestamp",
        ),
        pytest.param(
            b"<13>Oct 11 22:14:15 h\xc3\xa9 x: y",
            rfc3164("user", "notice", "Oct 11 22:14:15", None, None, None, b"h\xc3\xa9 x: y"),
            id="non-ascii-word-is-no-hostname",
        ),
        pytest.param(
            b'<38>2026-11-23T10:45:23.102Z agent-host-7 openclaw[811] {"a":1}',
            rfc3164(
                "auth",
                "info",
                "2026-11-23T10:45:23.102Z",
                "agent-host-7",
                "openclaw",
                "811",
                b'{"a":1}',
            ),
            id="rsyslog-relayed-5424-tag-without-colon",
        ),
        pytest.param(
            b"<38>Nov 23 10:45:23 host-7 openclaw[811] m",
            rfc3164("auth", "info", "Nov 23 10:45:23", "host-7", "openclaw", "811", b"m"),
            id="tag-with-pid-without-colon",
        ),
        pytest.param(
            b"<38>Nov 23 10:45:23 host-7 openclaw m",
            rfc3164("auth", "info", "Nov 23 10:45:23", "host-7", None, None, b"openclaw m"),
            id="no-colon-no-pid-is-no-tag",
        ),
        pytest.param(
            b"<38>2026-11-23T20:04:38 localhost prg00000[1234]: seq: 0",
            rfc3164(
                "auth", "info", "2026-11-23T20:04:38", "localhost", "prg00000", "1234", b"seq: 0"
            ),
            id="loggen-iso-timestamp-without-zone",
        ),
        pytest.param(
            b"<13>hello",
            rfc3164("user", "notice", None, None, None, None, b"hello"),
            id="no-header",
        ),
        pytest.param(
            b"<13>",
            rfc3164("user", "notice", None, None, None, None, b""),
            id="pri-only",
        ),
    ],
)
def test_rfc3164_variants(frame: bytes, expected: SyslogMessage) -> None:
    """Real-world RFC 3164 variants parse to the fields their senders meant."""
    assert parse(frame) == expected


@pytest.mark.parametrize(
    ("frame", "now", "timestamp"),
    [
        pytest.param(b"<13>Oct 11 22:14:15 h a: m", NOW, "2025-10-11T22:14:15Z", id="last-year"),
        pytest.param(b"<13>Jan  5 11:00:00 h a: m", NOW, "2026-01-05T11:00:00Z", id="this-year"),
        pytest.param(
            b"<13>Jan  1 00:00:01 h a: m",
            datetime(2025, 12, 31, 23, 59, tzinfo=UTC),
            "2026-01-01T00:00:01Z",
            id="clock-ahead-across-new-year",
        ),
        pytest.param(
            b"<13>Feb 29 10:00:00 h a: m",
            datetime(2025, 3, 1, tzinfo=UTC),
            "2024-02-29T10:00:00Z",
            id="leap-day-from-an-earlier-year",
        ),
        pytest.param(
            b"<13>Jun  1 10:00:00.25 h a: m",
            datetime(2026, 6, 1, tzinfo=timezone(timedelta(hours=2))),
            "2026-06-01T10:00:00.25+02:00",
            id="offset-of-now",
        ),
        pytest.param(
            b"<13>Jun  1 10:00:00 h a: m",
            datetime(2026, 6, 1, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
            "2026-06-01T10:00:00-03:30",
            id="negative-offset",
        ),
        pytest.param(
            b"<13>Mar  1 2019 18:46:11: %X: y", NOW, "2019-03-01T18:46:11Z", id="year-as-sent"
        ),
        pytest.param(
            b"<13>2003-08-24T05:14:15Z h a: m", NOW, "2003-08-24T05:14:15Z", id="rfc3339-kept"
        ),
        pytest.param(
            b"<13>2003-08-24T05:14:15 h a: m",
            datetime(2026, 6, 1, tzinfo=timezone(timedelta(hours=2))),
            "2003-08-24T05:14:15+02:00",
            id="rfc3339-without-zone-gets-nows",
        ),
    ],
)
def test_rfc3164_year_and_offset_from_now(frame: bytes, now: datetime, timestamp: str) -> None:
    """With now, an RFC 3164 timestamp becomes RFC 3339: the nearest year and now's offset."""
    assert parsed(frame, now=now).timestamp == timestamp


def test_rfc3164_record_has_the_envelope_names() -> None:
    """An RFC 3164 record has the same keys as an RFC 5424 one, msgid None and sd empty."""
    message = parsed(b"<86>Oct  1 02:03:04 host sshd[4242]: Accepted", now=NOW)
    assert message.record() == {
        "facility": "authpriv",
        "severity": "info",
        "hostname": "host",
        "app_name": "sshd",
        "procid": "4242",
        "msgid": None,
        "sd": {},
        "timestamp": "2025-10-01T02:03:04Z",
        "msg": "Accepted",
    }


# ---- formatting ----------------------------------------------------------------------------


def test_format_rfc5424_exact_bytes() -> None:
    """format_rfc5424 writes the header, escaped SD, BOM and MSG exactly as RFC 5424 says."""
    frame = format_rfc5424(
        "auth",
        "info",
        timestamp=datetime(2026, 11, 22, 10, 45, 23, 102345, tzinfo=UTC),
        hostname="host-7",
        app_name="openclaw",
        procid="811",
        msgid="audit",
        sd={"a@1": {"k": 'q"]\\', "r": ["1", "2"]}},
        msg="hi",
    )
    assert frame == (
        b"<38>1 2026-11-22T10:45:23.102345Z host-7 openclaw 811 audit "
        b'[a@1 k="q\\"\\]\\\\" r="1" r="2"] \xef\xbb\xbfhi'
    )
    assert format_rfc5424(0, 0) == b"<0>1 - - - - - -"
    assert format_rfc5424(23, 7, msg=b"raw", bom=False) == b"<191>1 - - - - - - raw"
    assert format_rfc5424("user", "info", msg="x", bom=False) == b"<14>1 - - - - - - x"
    offset = timezone(timedelta(hours=-7))
    assert format_rfc5424("user", "info", timestamp=datetime(2003, 8, 24, tzinfo=offset)) == (
        b"<14>1 2003-08-24T00:00:00.000000-07:00 - - - - -"
    )
    assert format_sd({}) == b"-"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"hostname": "a b"}, id="space-in-hostname"),
        pytest.param({"hostname": ""}, id="empty-hostname"),
        pytest.param({"app_name": "-"}, id="nilvalue-as-value"),
        pytest.param({"msgid": "\u00e9"}, id="non-ascii"),
        pytest.param({"timestamp": datetime(2026, 1, 1)}, id="naive-datetime"),
        pytest.param({"timestamp": "yesterday"}, id="bad-timestamp-string"),
        pytest.param({"sd": {"a=b": {"k": "v"}}}, id="bad-sd-id"),
        pytest.param({"sd": {"a": {"k]": "v"}}}, id="bad-param-name"),
    ],
)
def test_format_rfc5424_refuses_what_it_cannot_carry(kwargs: dict[str, object]) -> None:
    """A value the format cannot carry is a ValueError, never a corrupt message."""
    with pytest.raises(ValueError):  # noqa: PT011 - the messages vary by field
        format_rfc5424("user", "info", **kwargs)  # type: ignore[arg-type]


def test_format_rfc5424_refuses_unknown_priorities() -> None:
    """Facility and severity outside the RFC tables are refused."""
    with pytest.raises(ValueError, match="out of range"):
        format_rfc5424(24, 0)
    with pytest.raises(ValueError, match="out of range"):
        format_rfc5424(0, 8)


def test_format_rfc3164_exact_bytes() -> None:
    """format_rfc3164 writes the BSD header with a space-padded day and an optional hostname."""
    moment = datetime(2026, 3, 1, 8, 5, 9)
    assert (
        format_rfc3164("auth", "crit", timestamp=moment, hostname="h", app_name="su", msg="x")
        == b"<34>Mar  1 08:05:09 h su: x"
    )
    assert (
        format_rfc3164("user", "info", timestamp=moment, app_name="a", procid="9", msg=b"y")
        == b"<14>Mar  1 08:05:09 a[9]: y"
    )
    with pytest.raises(ValueError, match="TAG"):
        format_rfc3164("user", "info", timestamp=moment, app_name="a:b")


# ---- properties ----------------------------------------------------------------------------

printusascii = st.text(alphabet=[chr(c) for c in range(33, 127)], min_size=1, max_size=20).filter(
    lambda s: s != "-"
)
sd_names = st.text(
    alphabet=[chr(c) for c in range(33, 127) if chr(c) not in '="]'], min_size=1, max_size=12
)
sd_values = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('"\\]'), max_size=12)
messages_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40).map(
    lambda s: s.rstrip("\r\n\0")
)
timestamps = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@given(
    facility=st.sampled_from(FACILITIES),
    severity=st.sampled_from(SEVERITIES),
    timestamp=st.none() | timestamps,
    hostname=st.none() | printusascii,
    app_name=st.none() | printusascii,
    procid=st.none() | printusascii,
    msgid=st.none() | printusascii,
    sd=st.dictionaries(
        sd_names,
        st.dictionaries(sd_names, sd_values | st.lists(sd_values, min_size=2, max_size=3)),
        max_size=3,
    ),
    msg=messages_text,
)
def test_format_rfc5424_then_parse_gives_the_fields_back(
    facility: str,
    severity: str,
    timestamp: datetime | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
    sd: dict[str, dict[str, str | list[str]]],
    msg: str,
) -> None:
    """format_rfc5424 then parse returns every field, SD escapes and a BOM'd MSG included."""
    frame = format_rfc5424(
        facility,
        severity,
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=msgid,
        sd=sd,
        msg=msg,
    )
    message = parsed(frame)
    assert message.facility == facility
    assert message.severity == severity
    assert message.hostname == hostname
    assert message.app_name == app_name
    assert message.procid == procid
    assert message.msgid == msgid
    assert message.sd == sd
    assert message.msg == msg
    if timestamp is None:
        assert message.timestamp is None
    else:
        assert message.timestamp is not None
        assert datetime.fromisoformat(message.timestamp) == timestamp
    assert parsed(frame + b"\n") == message


@given(
    facility=st.sampled_from(FACILITIES),
    severity=st.sampled_from(SEVERITIES),
    moment=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2040, 1, 1)),
    hostname=st.none()
    | st.text(alphabet=string.ascii_letters + string.digits + ".-", min_size=1, max_size=10).filter(
        lambda name: name != "-"  # NILVALUE: the formatter refuses it as a hostname
    ),
    tag=st.none()
    | st.tuples(
        st.from_regex(r"[a-z][a-z0-9_/.-]{0,9}", fullmatch=True),
        st.none() | st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    ),
    msg=messages_text,
)
def test_format_rfc3164_then_parse_gives_the_fields_back(
    facility: str,
    severity: str,
    moment: datetime,
    hostname: str | None,
    tag: tuple[str, str | None] | None,
    msg: str,
) -> None:
    """format_rfc3164 then parse (with now near the timestamp) returns every field."""
    if hostname is None and tag is None:
        hostname = "host"  # without both, the first word of MSG would read as a hostname
    app_name, procid = tag if tag is not None else (None, None)
    assume(app_name is not None or ":" not in msg.split(" ", 1)[0])  # else MSG starts with a TAG
    frame = format_rfc3164(
        facility,
        severity,
        timestamp=moment,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msg=msg,
    )
    now = moment.replace(microsecond=0, tzinfo=UTC) + timedelta(days=100)
    message = parsed(frame, now=now)
    assert (message.facility, message.severity) == (facility, severity)
    assert message.timestamp == f"{moment:%Y-%m-%dT%H:%M:%S}Z"
    assert (message.hostname, message.app_name, message.procid) == (hostname, app_name, procid)
    assert message.msg == msg


@given(frame=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(frame: bytes) -> None:
    """parse returns a message or Malformed for any bytes, never an exception."""
    result = parse(frame, now=NOW)
    assert isinstance(result, SyslogMessage | Malformed)
    if isinstance(result, Malformed):
        assert result.raw == frame[:4096]


syntax_pieces = st.sampled_from(
    [
        b"<13>",
        b"<191>",
        b"1 ",
        b"-",
        b" ",
        b"[",
        b"]",
        b"=",
        b'"',
        b"\\",
        b"a",
        b"@1",
        b"Oct",
        b" 1 ",
        b"22:14:15",
        b"2003-10-11T22:14:15Z",
        b".5",
        b"+07:00",
        b":",
        b"[1]",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\n",
        b"\0",
        b"123: ",
        b"*",
    ]
)


@given(pieces=st.lists(syntax_pieces, max_size=30), now=st.none() | st.just(NOW))
def test_syntax_soup_never_raises(pieces: list[bytes], now: datetime | None) -> None:
    """Frames built from syslog's own syntax pieces parse or are Malformed, never raise."""
    result = parse(b"<13>" + b"".join(pieces), now=now)
    assert isinstance(result, SyslogMessage | Malformed)
    if isinstance(result, SyslogMessage):
        result.record()
        result.envelope_syslog()


# ---- the fast path (see "Speed" in shipper.codecs.syslog) ------------------------------------


def careful(frame: bytes, now: datetime | None = None) -> SyslogMessage | Malformed:
    """The careful parser alone: what ``parse`` must return whichever path it takes."""
    return _parse_careful(frame, frame.rstrip(b"\r\n\0"), now)


def test_the_fast_path_takes_the_usual_forms() -> None:
    """The usual forms of each format are read by the fast pattern (else it would be a no-op)."""
    for frame in (
        b'<165>1 2003-10-11T22:14:15.003Z host app - ID47 [a@1 b="c" d=""][e] msg',
        b"<34>1 2003-10-11T22:14:15.003Z host su - ID47 - \xef\xbb\xbfmsg",
        b"<13>Oct 11 22:14:15 host su[12]: msg",
        b"<13>Oct  1 22:14:15 su: msg",
        b"<189>123: *Oct 11 22:14:15.123: %SYS-5-CONFIG_I: msg",
    ):
        assert _FAST.match(frame) is not None, frame
        assert parse(frame) == careful(frame)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b'<13>1 - h a p m [a b="1" b="2"] x', id="repeated-param-name"),
        pytest.param(b'<13>1 - h a p m [a b="1"][c d="2"][a e="3"] x', id="repeated-sd-id"),
        pytest.param(b'<13>1 - h a p m [a b=" 1" c="2"] x', id="value-starting-with-sp"),
        pytest.param(b'<13>1 - h a p m [a b="1=" c="2"] x', id="value-ending-with-eq"),
        pytest.param(b'<13>1 - h a p m [a b="1=" c="=2="] x', id="values-with-eq-last"),
        pytest.param(b'<13>1 - h a p m [a b="1\\"2" c="\\]"] x', id="escapes"),
        pytest.param(b'<13>1 - h a p m [a b="1]2"][c] x', id="bracket-in-value"),
        pytest.param(b'<13>1 - h a p m [a b="1][c d=2"] x', id="element-end-in-value"),
        pytest.param(b'<13>1 - h a p m [a b="\xff"] x', id="value-not-utf8"),
        pytest.param(b'<13>1 - h a p m [a b="\xc3\xa9"][[x] x', id="utf8-value-odd-sd-id"),
        pytest.param(b"<13>1 2024-02-29T00:00:00Z h a p m - x", id="leap-day"),
        pytest.param(b"<13>1 2023-02-29T00:00:00Z h a p m - x", id="not-a-leap-day"),
        pytest.param(b"<13>1 2023-04-31T00:00:00Z h a p m - x", id="april-31"),
        pytest.param(b"<13>1 0000-01-01T00:00:00Z h a p m - x", id="year-0"),
        pytest.param(b"<13>1 2003-10-11t22:14:15z h a p m - x", id="lower-case"),
        pytest.param(b"<192>1 - h a p m - x", id="pri-192"),
        pytest.param(b"<007>1 - h a p m - x", id="pri-leading-zeros"),
        pytest.param(b"<13>1 - h a p m -", id="no-msg"),
        pytest.param(b"<13>1 - h a p m - ", id="empty-msg"),
        pytest.param(b"<13>1 - h a p m [a]", id="sd-no-msg"),
        pytest.param(b"<13>1 - h a p m -x", id="nil-sd-then-text"),
        pytest.param(b"<13>1 - h a p m [a]x", id="sd-then-text"),
        pytest.param(b"<13>1 - h a p m - \xef\xbb\xbf\xef\xbb\xbfx", id="two-boms"),
        pytest.param(b"<13>1 - h\x7f a p m - x", id="del-in-hostname"),
        pytest.param(b"<13>Oct 11 22:14:15 2001:db8::1 su[12]: msg", id="ipv6-host"),
        pytest.param(b"<13>Oct 11 22:14:15 host su[]: msg", id="empty-pid"),
        pytest.param(b"<13>Oct 11 22:14:15 host not-a-tag msg", id="no-tag"),
        pytest.param(b"<13>Oct 11 22:14:15 a:b su: msg", id="colon-in-first-word"),
        pytest.param(b"<13>Oct 32 22:14:15 host su: msg", id="day-32"),
        pytest.param(b"<13>Oct 00 22:14:15 host su: msg", id="day-0"),
        pytest.param(b"<13>Oct 11 24:14:15 host su: msg", id="hour-24"),
        pytest.param(b"<13>Oct  11 22:14:15 host su: msg", id="two-spaces-two-digits"),
        pytest.param(b"<13>Oct 11 2026 22:14:15.5 host su: msg", id="year-and-fraction"),
        pytest.param(b"<13>Oct 11 22:14:15", id="timestamp-only"),
        pytest.param(b"<13>Oct 11 22:14:15 host", id="host-only"),
        pytest.param(b"<13>Oct 11 22:14:15 su:", id="tag-at-end"),
        pytest.param(b"<189>Oct 11 22:14:15: %SYS-5-CONFIG_I: msg", id="cisco-colon"),
        pytest.param(b"<189>12: Oct 11 22:14:15 %SYS-5-CONFIG_I: msg", id="cisco-seq-no-colon"),
        pytest.param(b"<189>12: Oct 11 22:14:15", id="cisco-seq-at-end"),
        pytest.param(b"<189>1: Oct 11 22:14:15: x", id="cisco-seq-1"),
        pytest.param(b"<13>1 Oct 11 22:14:15 host su: msg", id="version-then-bsd"),
    ],
)
def test_fast_path_edges_agree_with_the_careful_parser(frame: bytes) -> None:
    """Frames at the edges of the fast pattern parse as the careful parser reads them."""
    for now in (None, NOW):
        for suffix in (b"", b"\n", b"\r\n\0"):
            assert parse(frame + suffix, now=now) == careful(frame + suffix, now)


def pick(usual: bytes, *others: bytes) -> st.SearchStrategy[bytes]:
    """Mostly ``usual``, sometimes one of ``others`` (often a broken variant)."""
    return st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(others))


name_bytes = st.lists(
    pick(b"a", b"b", b"@", b"1", b"[", b"\\", b"=", b"]", b'"', b" ", b"\xc3"), max_size=4
).map(b"".join)
value_bytes = st.lists(
    pick(b"a", b" ", b"=", b'"', b"\\", b"]", b"[", b"][", b'="', b'" ', b"\xc3\xa9", b"\xff"),
    max_size=6,
).map(b"".join)
sd_params = st.lists(
    st.tuples(pick(b" ", b"  ", b""), pick(b"p", b"q"), name_bytes, pick(b'="', b"="))
    .map(b"".join)
    .flatmap(lambda head: value_bytes.map(lambda value: head + value + b'"')),
    max_size=3,
).map(b"".join)
sd_elements = st.lists(
    st.tuples(pick(b"[a", b"[b", b"[x@1", b"["), name_bytes, sd_params, pick(b"]", b"", b"] ")).map(
        b"".join
    ),
    min_size=1,
    max_size=3,
).map(b"".join)
rfc5424_frames = st.tuples(
    pick(b"<13>", b"<191>", b"<192>", b"<007>", b"<>", b"13>"),
    pick(b"1 ", b"2 ", b"1"),
    st.one_of(
        st.just(b"-"),
        st.tuples(
            pick(b"2024", b"0000", b"1999"),
            pick(b"-02-", b"-04-", b"-13-", b"-00-"),
            pick(b"28", b"29", b"30", b"31", b"00"),
            pick(b"T", b"t", b" "),
            pick(b"23:59:", b"24:00:", b"00:60:"),
            pick(b"60", b"59", b"61"),
            pick(b"", b".5", b".", b".123456789"),
            pick(b"Z", b"z", b"+05:30", b"-24:00", b""),
        ).map(b"".join),
    ),
    pick(
        b" host app 42 ID47 ", b" - - - - ", b" h\xc3\xa9 a p m ", b" h a\x01 p m ", b" h  a p m "
    ),
    st.one_of(st.just(b"-"), sd_elements, st.just(b"")),
    pick(b" msg", b"", b" ", b" \xef\xbb\xbf{}", b"x", b"\n", b" \xff"),
).map(b"".join)
rfc3164_frames = st.tuples(
    pick(b"<13>", b"<192>", b"<013>"),
    pick(b"", b"123: ", b"1:", b"x: "),
    pick(b"", b"*", b"."),
    pick(b"Oct", b"Feb", b"Foo", b"oct"),
    pick(b" 11", b"  1", b" 1", b" 32", b" 0", b"  11", b"11"),
    pick(b" ", b" 2026 ", b"  "),
    pick(b"22:14:15", b"24:14:15", b"22:60:15", b"22:14:61", b"22:14:15.123", b"22:14:15."),
    pick(b" ", b": ", b":", b""),
    pick(b"host ", b"", b"a:b ", b"::1 ", b"h\xc3\xa9 ", b"x[1]: "),
    pick(b"su[12]: ", b"su: ", b"su[]: ", b"su[1]:", b"su ", b"s:u: ", b""),
    pick(b"msg", b"", b"\xff"),
).map(b"".join)


@given(frame=rfc5424_frames | rfc3164_frames, now=st.none() | st.just(NOW))
def test_fast_path_agrees_with_the_careful_parser(frame: bytes, now: datetime | None) -> None:
    """Near-valid frames of every form parse exactly as the careful parser reads them."""
    assert parse(frame, now=now) == careful(frame, now)


def test_an_rfc3164_year_before_1000_is_written_with_four_digits() -> None:
    """A BSD timestamp that names year 1 becomes an RFC 3339 timestamp with a four-digit year."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    message = parse(b"<13>Dec 31 0001 00:00:00 host app: x", now=now)
    assert not isinstance(message, Malformed)
    assert message.record()["timestamp"] == "0001-12-31T00:00:00Z"
