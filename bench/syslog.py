"""Syslog parse throughput per format, beside the Python limit of the same work, in one run.

Every case takes the same chained audit records (``bench.events.generate_lines``) written as syslog
messages (``bench.events.syslog_messages``) and runs two loops over them:

* **shipper**: what the daemon runs per message: ``shipper.codecs.syslog.parse`` on each frame,
  and for the stream cases first ``shipper.codecs.framing.AutoFramer`` fed in 256 KiB pieces (the
  size the stream sources receive), as a connection does;
* **limit**: a tight loop doing the minimum for the *same result* on these messages: a
  precompiled regular expression (or ``bytes.find``/``split``) for the header, the PRI decoded by
  ``int`` and two tuple lookups, STRUCTURED-DATA cut with a regular expression and ``str.split``,
  MSG sliced off, one tuple per message; no validation, no result object, no error paths. It is
  right only for well-formed input like the bench's. The limit deframers do what the framing needs
  for these streams and nothing more: octet counting is ``find(" ")`` + ``int`` + slice, LF
  framing ``split(b"\\n")``, each with the carry-over between pieces.

Before timing, both loops run once over all events and must give the same results (facility,
severity, timestamp, hostname, app name, procid, msgid, SD mapping, MSG bytes; frames for the
deframe cases), so the limit cannot skip work the parser does.

The loops alternate over the same chunks of ``--chunk`` events (ABBA order) for ``--repeats``
rounds; each loop's time is the sum over chunks of its best run per chunk, which keeps the
machine's speed swings out of the ratio. The ratio ``shipper / limit`` (events/s) is the figure to
watch; absolute rates swing with machine noise. MB/s count the input bytes (frames, or the framed
stream with its MSG-LEN or LF), 10^6 bytes.

Run: ``.venv/bin/python -m bench.syslog [--events N] [--repeats N] [--chunk N] [--cases a,b]``
(``make bench-syslog``). End-to-end syslog ingest through the daemon is ``python -m bench
--protocol syslog`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.events import generate_lines, lf_framed, octet_counted, syslog_messages
from bench.timing import interleaved_best
from shipper.codecs.framing import AutoFramer
from shipper.codecs.syslog import FACILITIES, SEVERITIES, SyslogMessage, parse

RECEIVE_BYTES = 256 * 1024
"""Piece size for the stream cases: what ``shipper.sources._net`` asks of ``receive_some``."""
MAX_FRAME = 1024 * 1024

Loop = Callable[[Sequence[bytes]], list[Any]]


# ------------------------------------------------------------------------------------ shipper


def shipper_parse(frames: Sequence[bytes]) -> list[Any]:
    """``parse`` on every frame."""
    out: list[Any] = []
    append = out.append
    for frame in frames:
        append(parse(frame))
    return out


def shipper_deframe(pieces: Sequence[bytes]) -> list[Any]:
    """``AutoFramer`` fed piece by piece; the frames (the stream must end on a frame boundary)."""
    framer = AutoFramer(MAX_FRAME)
    out: list[Any] = []
    for piece in pieces:
        out += framer.feed(piece)
    return out


def shipper_stream(pieces: Sequence[bytes]) -> list[Any]:
    """``AutoFramer`` fed piece by piece, ``parse`` on every frame."""
    framer = AutoFramer(MAX_FRAME)
    out: list[Any] = []
    append = out.append
    for piece in pieces:
        for frame in framer.feed(piece):
            if isinstance(frame, bytes):
                append(parse(frame))
    return out


# -------------------------------------------------------------------------------------- limit

#: The limit's RFC 5424 pattern (no validation): PRIVAL, TIMESTAMP to MSGID, STRUCTURED-DATA.
RFC5424_LIMIT = re.compile(
    rb"<([0-9]{1,3})>1 ([^ ]+ [^ ]+ [^ ]+ [^ ]+ [^ ]+) (?:-|((?:\[[^\]]*\])+)) ?"
)
_L3164 = re.compile(
    rb"<([0-9]{1,3})>([A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]) "
    rb"([^ ]+) ([^ \[]+)\[([^\]]*)\]: "
)
_L3164_LOCAL = re.compile(
    rb"<([0-9]{1,3})>([A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]) "
    rb"([^ \[]+)\[([^\]]*)\]: "
)
_LCISCO = re.compile(
    rb"<([0-9]{1,3})>([0-9]+): "
    rb"([*.]?[A-Z][a-z][a-z] [ 0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]+)?): "
)


def limit_5424(frames: Sequence[bytes]) -> list[Any]:
    """RFC 5424 with SD: one regex for PRI, header and the extent of STRUCTURED-DATA, which is then
    cut with ``str.split`` (right for values without ``"`` and ``]``)."""
    out: list[Any] = []
    append = out.append
    header = RFC5424_LIMIT.match
    facilities, severities = FACILITIES, SEVERITIES
    for data in frames:
        head = header(data)
        assert head is not None
        pri = int(head[1])
        stamp, host, app, procid, msgid = head[2].decode().split(" ")
        sd: dict[str, dict[str, Any]] = {}
        raw_sd = head[3]
        if raw_sd is not None:
            for element in raw_sd[1:-1].decode().split("]["):
                sd_id, _, params = element.partition(" ")
                pairs = iter(params[:-1].replace('" ', '="').split('="'))
                sd[sd_id] = dict(zip(pairs, pairs, strict=False))
        append(
            (
                facilities[pri >> 3],
                severities[pri & 7],
                None if stamp == "-" else stamp,
                None if host == "-" else host,
                None if app == "-" else app,
                None if procid == "-" else procid,
                None if msgid == "-" else msgid,
                sd,
                data[head.end() :],
            )
        )
    return out


def limit_3164(frames: Sequence[bytes]) -> list[Any]:
    """``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG``: one regex."""
    out: list[Any] = []
    append = out.append
    header = _L3164.match
    facilities, severities = FACILITIES, SEVERITIES
    for data in frames:
        head = header(data)
        assert head is not None
        pri = int(head[1])
        stamp, host, app, procid = head.group(2, 3, 4, 5)
        append(
            (
                facilities[pri >> 3],
                severities[pri & 7],
                stamp.decode(),
                host.decode(),
                app.decode(),
                procid.decode(),
                None,
                {},
                data[head.end() :],
            )
        )
    return out


def limit_3164_local(frames: Sequence[bytes]) -> list[Any]:
    """``<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG``: one regex."""
    out: list[Any] = []
    append = out.append
    header = _L3164_LOCAL.match
    facilities, severities = FACILITIES, SEVERITIES
    for data in frames:
        head = header(data)
        assert head is not None
        pri = int(head[1])
        stamp, app, procid = head.group(2, 3, 4)
        append(
            (
                facilities[pri >> 3],
                severities[pri & 7],
                stamp.decode(),
                None,
                app.decode(),
                procid.decode(),
                None,
                {},
                data[head.end() :],
            )
        )
    return out


def limit_cisco(frames: Sequence[bytes]) -> list[Any]:
    """``<PRI>SEQ: *Mmm dd hh:mm:ss.mmm: MSG``: one regex."""
    out: list[Any] = []
    append = out.append
    header = _LCISCO.match
    facilities, severities = FACILITIES, SEVERITIES
    for data in frames:
        head = header(data)
        assert head is not None
        pri = int(head[1])
        sequence, stamp = head.group(2, 3)
        append(
            (
                facilities[pri >> 3],
                severities[pri & 7],
                stamp.decode(),
                None,
                None,
                None,
                None,
                {"meta": {"sequenceId": sequence.decode()}},
                data[head.end() :],
            )
        )
    return out


def limit_octet(pieces: Sequence[bytes]) -> list[Any]:
    """Octet counting: ``find(" ")``, ``int`` of the count, slice; the tail carried over."""
    out: list[Any] = []
    append = out.append
    carry = b""
    for piece in pieces:
        data = carry + piece if carry else piece
        pos = 0
        end = len(data)
        while True:
            space = data.find(b" ", pos, pos + 12)
            if space < 0:
                break
            stop = space + 1 + int(data[pos:space])
            if stop > end:
                break
            append(data[space + 1 : stop])
            pos = stop
        carry = data[pos:]
    return out


def limit_lf(pieces: Sequence[bytes]) -> list[Any]:
    """LF framing: ``split(b"\\n")``, the tail carried over."""
    out: list[Any] = []
    carry = b""
    for piece in pieces:
        lines = (carry + piece if carry else piece).split(b"\n")
        carry = lines.pop()
        out += lines
    return out


def limit_octet_5424(pieces: Sequence[bytes]) -> list[Any]:
    return limit_5424(limit_octet(pieces))


def limit_lf_5424(pieces: Sequence[bytes]) -> list[Any]:
    return limit_5424(limit_lf(pieces))


# -------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    style: str
    """``bench.events.SYSLOG_STYLES``."""
    framing: str | None
    """None: one frame per message; ``octet`` or ``lf``: a stream in 256 KiB pieces."""
    shipper: Loop
    limit: Loop


CASES: tuple[Case, ...] = (
    Case("5424", "rfc5424 sd + json: parse", "rfc5424", None, shipper_parse, limit_5424),
    Case(
        "5424-nil-sd",
        "rfc5424 no sd + json: parse",
        "rfc5424-nil-sd",
        None,
        shipper_parse,
        limit_5424,
    ),
    Case("octet", "octet-counted: deframe", "rfc5424", "octet", shipper_deframe, limit_octet),
    Case(
        "octet-5424",
        "octet-counted rfc5424: deframe+parse",
        "rfc5424",
        "octet",
        shipper_stream,
        limit_octet_5424,
    ),
    Case("lf", "LF-framed: deframe", "rfc5424", "lf", shipper_deframe, limit_lf),
    Case(
        "lf-5424",
        "LF-framed rfc5424: deframe+parse",
        "rfc5424",
        "lf",
        shipper_stream,
        limit_lf_5424,
    ),
    Case("3164", "rfc3164 host tag[pid]: parse", "rfc3164", None, shipper_parse, limit_3164),
    Case(
        "3164-local",
        "rfc3164 tag[pid], no host: parse",
        "rfc3164-local",
        None,
        shipper_parse,
        limit_3164_local,
    ),
    Case("cisco", "rfc3164 cisco seq: parse", "cisco", None, shipper_parse, limit_cisco),
)


def _fields(result: object) -> object:
    """A parse result as the limit reports it (frames stay as they are)."""
    if isinstance(result, SyslogMessage):
        return (
            result.facility,
            result.severity,
            result.timestamp,
            result.hostname,
            result.app_name,
            result.procid,
            result.msgid,
            result.sd,
            result.msg_bytes,
        )
    return result


def _inputs(messages: Sequence[bytes], framing: str | None, chunk: int) -> list[list[bytes]]:
    """Per chunk of ``chunk`` messages: the frames, or the framed stream cut into pieces."""
    out: list[list[bytes]] = []
    for begin in range(0, len(messages), chunk):
        part = messages[begin : begin + chunk]
        if framing is None:
            out.append(list(part))
            continue
        stream = octet_counted(part) if framing == "octet" else lf_framed(part)
        out.append([stream[at : at + RECEIVE_BYTES] for at in range(0, len(stream), RECEIVE_BYTES)])
    return out


def check(case: Case, chunks: Sequence[Sequence[bytes]], events: int) -> None:
    """Both loops give the same results over every chunk, one per event; else SystemExit."""
    count = 0
    for chunk in chunks:
        mine = [_fields(result) for result in case.shipper(chunk)]
        theirs = case.limit(chunk)
        if mine != theirs:
            first = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            raise SystemExit(
                f"{case.name}: shipper and limit disagree at result {count + first}:\n"
                f"  shipper {mine[first] if first < len(mine) else '(none)'!r}\n"
                f"  limit   {theirs[first] if first < len(theirs) else '(none)'!r}"
            )
        count += len(mine)
    if count != events:
        raise SystemExit(f"{case.name}: {count} results for {events} events")


def best_times(case: Case, chunks: Sequence[Sequence[bytes]], repeats: int) -> tuple[float, float]:
    """Seconds (shipper, limit) for all chunks: per chunk the best of ``repeats`` runs, summed.

    The loops alternate chunk by chunk (ABBA order), so the machine's speed swings hit both alike.
    """
    loops = {"shipper": case.shipper, "limit": case.limit}

    def run(name: str, index: int) -> float:
        start = time.perf_counter()
        loops[name](chunks[index])
        return time.perf_counter() - start

    best = interleaved_best(list(loops), len(chunks), repeats, run)
    return best["shipper"], best["limit"]


@dataclass(frozen=True)
class Row:
    case: Case
    events: int
    input_bytes: int
    shipper_seconds: float
    limit_seconds: float

    @property
    def ratio(self) -> float:
        return self.limit_seconds / self.shipper_seconds

    def format(self) -> str:
        def rate(seconds: float) -> str:
            return (
                f"{self.events / seconds:>10,.0f} {self.input_bytes / seconds / 1e6:>7.1f}"
                f" {seconds / self.events * 1e6:>6.2f}"
            )

        return (
            f"{self.case.label:<38} {rate(self.shipper_seconds)}  {rate(self.limit_seconds)}"
            f"  {self.ratio:>5.2f}"
        )


HEADER = (
    f"{'case':<38} {'events/s':>10} {'MB/s':>7} {'us/ev':>6}  {'limit/s':>10} {'MB/s':>7}"
    f" {'us/ev':>6}  {'ratio':>5}"
)


def run_case(case: Case, lines: Sequence[bytes], chunk: int, repeats: int) -> Row:
    messages = syslog_messages(lines, case.style)
    chunks = _inputs(messages, case.framing, chunk)
    check(case, chunks, len(messages))
    input_bytes = sum(len(piece) for part in chunks for piece in part)
    gc.collect()
    shipper_seconds, limit_seconds = best_times(case, chunks, repeats)
    return Row(case, len(messages), input_bytes, shipper_seconds, limit_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syslog", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="runs per chunk (best kept)")
    parser.add_argument("--chunk", type=int, default=2_000, help="events per interleaved run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cases",
        default=",".join(case.name for case in CASES),
        help="comma-separated subset of: " + ", ".join(case.name for case in CASES),
    )
    args = parser.parse_args(argv)
    wanted = args.cases.split(",")
    unknown = set(wanted) - {case.name for case in CASES}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    lines = generate_lines(args.events, args.agents, args.seed)
    print(
        f"{args.events} events per case, {args.agents} agents, chunks of {args.chunk}, best of"
        f" {args.repeats} runs per chunk; ratio = shipper events/s / limit events/s"
    )
    print(HEADER)
    for case in CASES:
        if case.name in wanted:
            print(run_case(case, lines, args.chunk, args.repeats).format(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
