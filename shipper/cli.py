"""Command line: ``shipper run``, ``validate``, ``buffer``, ``chain``, ``verify``,
``dead-letter``, ``tap`` (``shipper.cli_tap``), ``top`` (``shipper.cli_top``), ``reload``
(``shipper.cli_reload``) (see README, "Command line").

Exit codes: 0 success; 1 runtime failure (cannot listen, WAL in use, a sink's destination unsafe
to write to, damage found by ``buffer inspect``, an agent ``chain status --agent`` does not
know, a destination ``validate --check-remote`` found unsafe or could not ask, an archive
``verify`` did not find intact or could not read, a ``dead-letter`` file unreadable or a replay
that left files behind, an API ``top`` cannot reach); 2 usage error (also a ``dead-letter`` sink or file that is not there);
78 (EX_CONFIG) invalid configuration.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import orjson
import trio

from shipper import __version__, cli_reload, cli_tap
from shipper.api.client import ApiError, ApiSettings, ApiUnreachable, add_api_arguments, locate
from shipper.buffer.recovery import WalFormatError, read_epoch, recover
from shipper.buffer.wal import WalLocked, lock_directory
from shipper.chain import PROFILES
from shipper.chain_stage import (
    CHAIN_CURSOR,
    ChainStage,
    Checkpoint,
    checkpoint_path,
    read_checkpoint,
)
from shipper.config import Config, load_config
from shipper.errors import (
    EX_CONFIG,
    ConfigError,
    DataDirError,
    DestinationRejected,
    DestinationUnavailable,
    ListenError,
    UnsafeDestination,
)
from shipper.logging import configure, get_logger

#: How long ``validate --check-remote`` waits for each destination.
REMOTE_CHECK_SECONDS = 20.0
DEFAULT_CONFIG = "config/shipper.toml"

log = get_logger("shipper.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shipper", description="Log-shipping daemon for AI-agent audit trails."
    )
    parser.add_argument("--version", action="version", version=f"shipper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    validate = commands.add_parser("validate", help="check a config file; exit 0 ok, 78 invalid")
    validate.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    validate.add_argument(
        "--check-remote",
        action="store_true",
        help="also ask each sink's destination whether it is safe to write to (an S3 bucket "
        "without Object Lock is not, with a lock mode set); exit 1 if one is not, or cannot "
        "be asked",
    )
    buffer = commands.add_parser("buffer", help="WAL health: inspect (read-only) or repair")
    buffer.add_argument("action", choices=["inspect", "repair"])
    buffer.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    buffer.add_argument("--json", action="store_true", help="print the report as JSON")
    chain = commands.add_parser("chain", help="per-agent hash-chain state")
    chain.add_argument("action", choices=["status"])
    chain.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    chain.add_argument("--agent", help="only this agent")
    chain.add_argument("--json", action="store_true", help="print the status as JSON")
    add_api_arguments(chain)
    verify = commands.add_parser(
        "verify", help="re-verify an archive offline; exit 0 intact, 1 not (or unreadable)"
    )
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--s3", metavar="s3://BUCKET/PREFIX", help="the s3 sink's archive")
    where.add_argument("--dir", metavar="PATH", help="the file sink's archive (a directory)")
    verify.add_argument("--endpoint", metavar="URL", help="an S3-compatible endpoint (--s3)")
    verify.add_argument("--region", help="the bucket's region (--s3; default: AWS_REGION)")
    verify.add_argument(
        "--expect-head",
        metavar="sha256:HEX",
        help="a manifest head witnessed earlier, which the chain must still hold (--s3)",
    )
    verify.add_argument(
        "--profile", choices=sorted(PROFILES), default="seed", help="the chain profile"
    )
    verify.add_argument(
        "--max-object-bytes",
        metavar="SIZE",
        type=_size,
        default=None,
        help="the most an object or file may hold decompressed; larger ones are reported,"
        ' not read (default "256MiB")',
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    top = commands.add_parser("top", help="live table of sources, sinks and troubled agents")
    add_api_arguments(top)
    top.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    letters = commands.add_parser(
        "dead-letter",
        help="what a sink's receiver refused for good: list, show, or replay it once fixed",
    )
    letters.add_argument("action", choices=["list", "show", "replay"])
    letters.add_argument("sink", metavar="SINK", help="the sink's id")
    letters.add_argument(
        "files",
        metavar="FILE",
        nargs="*",
        help="dead-letter file names as listed (show: exactly one; replay: default all)",
    )
    letters.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    letters.add_argument("--json", action="store_true", help="list and show: print JSON")
    cli_tap.add_parser(commands)
    cli_reload.add_parser(commands)
    return parser


def _size(value: str) -> int:
    """A size from the command line: bytes, or ``"512MB"``/``"1GiB"`` as in the config file."""
    from shipper.config.values import parse_size

    try:
        size = parse_size(int(value) if value.isdigit() else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if size < 1:
        raise argparse.ArgumentTypeError("expected at least one byte")
    return size


def _load(path: str) -> Config | None:
    """The config, or None after printing every problem to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc)
        return None


def _print_problems(path: str, error: ConfigError) -> None:
    print(error.report(path), file=sys.stderr)


def cmd_validate(path: str, check_remote: bool = False) -> int:
    config = _load(path)
    if config is None:
        return EX_CONFIG
    print(f"{path}: ok ({len(config.sources)} sources, {len(config.sinks)} sinks)")
    if check_remote:
        return trio.run(_check_remote, config)
    return 0


async def _check_remote(config: Config) -> int:
    """Each sink's ``check_remote``, one line per sink; 1 if any is unsafe or cannot be asked."""
    failed = False
    for sink in config.sinks.values():
        try:
            with trio.fail_after(REMOTE_CHECK_SECONDS):
                await sink.check_remote()
        except UnsafeDestination as exc:
            print(f"sinks.{sink.id}: unsafe: {exc}", file=sys.stderr)
            failed = True
        except (DestinationUnavailable, DestinationRejected) as exc:
            print(f"sinks.{sink.id}: could not check: {exc}", file=sys.stderr)
            failed = True
        except trio.TooSlowError:
            print(
                f"sinks.{sink.id}: could not check: no answer in {REMOTE_CHECK_SECONDS:g} s",
                file=sys.stderr,
            )
            failed = True
        else:
            print(f"sinks.{sink.id}: ok")
    return 1 if failed else 0


def cmd_run(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc)
        configure("info")
        count = len(exc.problems)
        log.error(
            "shipper_failed",
            error=f"invalid configuration ({count} problem{'s' if count != 1 else ''})",
            config=path,
            problems=[str(problem) for problem in exc.problems],
        )
        return EX_CONFIG
    configure(config.log_level)
    from shipper import heap
    from shipper.shutdown import run_daemon

    heap.enable()

    failed = False
    try:
        trio.run(run_daemon, config)
    except* (ListenError, WalLocked, WalFormatError, DataDirError, UnsafeDestination) as group:
        for leaf in _leaves(group):
            log.error("shipper_failed", error=str(leaf))
        failed = True
    except* Exception as group:
        # A defect: one entry naming it, with the traceback inside the entry, never on stderr.
        for leaf in _leaves(group):
            log.error(
                "shipper_failed",
                error=f"{type(leaf).__name__}: {leaf}",
                detail="an unexpected error inside shipper (a defect): please report it",
                traceback="".join(traceback.format_exception(leaf)),
            )
        failed = True
    return 1 if failed else 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside a (nested) exception group."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def cmd_buffer(path: str, action: str, as_json: bool) -> int:
    """Report on the WAL (``inspect`` changes nothing; ``repair`` does what start-up does, with
    the chain checkpoint's epoch as the hint for a damaged ``epoch`` file).

    Exit 0 when the WAL is healthy (or was repaired), 1 when ``inspect`` found damage or the WAL is
    in use by a running daemon (for ``repair``). Info-level findings are not damage: a sink with no
    cursor yet (it has acknowledged nothing), a range quarantined earlier, a released cursor, a
    stray file.
    """
    config = _load(path)
    if config is None:
        return EX_CONFIG
    directory = config.data_dir / "wal"
    lock = None
    if action == "repair":
        try:
            lock = lock_directory(directory)
        except WalLocked as exc:
            print(f"shipper buffer repair: {exc}", file=sys.stderr)
            return 1

    # The chain checkpoint's epoch is the best evidence of the WAL's, if its file is damaged.
    found = read_checkpoint(config.data_dir)
    hint = found.epoch if isinstance(found, Checkpoint) else None
    try:
        # The chain checkpoint's cursor holds segments like a sink's: repair must keep it.
        report = recover(
            directory, [CHAIN_CURSOR, *config.sinks], repair=action == "repair", epoch_hint=hint
        )
    except WalFormatError as exc:
        print(f"shipper buffer {action}: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            os.close(lock)
    sinks = {
        sink: {"cursor": str(position), "lag_bytes": report.lag_bytes(position)}
        for sink, position in report.cursors.items()
    }
    document = {
        "directory": str(directory),
        "action": action,
        "epoch": report.epoch or None,
        "segments": [
            {
                "segment": s.number,
                "bytes": s.size,
                "records": s.records,
                "events": s.events,
                "skipped": s.skips,
            }
            for s in report.segments
        ],
        "bytes": sum(s.size for s in report.segments),
        "sinks": sinks,
        "findings": [{**asdict(f), "level": f.level} for f in report.findings],
    }
    if as_json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"WAL {directory}: {len(report.segments)} segments, {document['bytes']} bytes")
        print(f"  epoch: {report.epoch or 'none'}")
        for info in report.segments:
            print(
                f"  segment {info.number}: {info.size} bytes, {info.events} events"
                f" in {info.records} records"
            )
        for sink, state in sinks.items():
            print(f"  sink {sink}: cursor {state['cursor']}, lag {state['lag_bytes']} bytes")
        verb = "fixed" if action == "repair" else "found"
        for finding in report.findings:  # info-level findings lose nothing: not damage
            print(
                f"  {'note' if finding.level == 'info' else verb}: {finding.kind}: {finding.detail}"
            )
        if not report.damaged:
            print("  no damage found")
    return 1 if action == "inspect" and report.damaged else 0


def cmd_chain_status(
    path: str,
    agent: str | None,
    as_json: bool,
    api_address: str | None = None,
    api_ca: str | None = None,
) -> int:
    """Per agent: last sequence, open gaps, counts by status, last alert.

    Asked of the running daemon's API when there is one (``--api``, or the config's ``[api]
    address``); else, or when nothing answers there, read from the state on disk: the chain
    checkpoint plus the WAL after it (read-only, so it also works beside a running daemon,
    whose latest batches it may not see yet). One line on stderr says which.
    """
    from shipper.api.chains import fetch_status

    try:  # the [api] table alone: the daemon's secrets need not be set in this shell
        settings: ApiSettings | None = ApiSettings.read(path)
    except ConfigError:
        settings = None  # (the whole file is read below, and its problems told)
    configure("warning")  # keep the daemon's info entries off the report
    api = locate(api_address, settings, api_ca)
    status = None
    where = "no [api] address in the config and no --api"
    if api is not None:
        try:
            status = trio.run(fetch_status, api, agent)
        except ApiUnreachable as exc:
            where = str(exc)
        except ApiError as exc:
            print(f"shipper chain status: {exc}", file=sys.stderr)
            return 1
        else:
            print(f"shipper chain status: from the daemon's API at {api.url}", file=sys.stderr)
    if status is None:
        config = _load(path)
        if config is None:
            return EX_CONFIG
        print(
            f"shipper chain status: {where}: reading the files in {config.data_dir}",
            file=sys.stderr,
        )
        status = _chain_status_from_files(config, agent)
    if agent is not None and agent not in status["agents"]:
        print(f"shipper chain status: no chain state for agent {agent!r}", file=sys.stderr)
        return 1
    if as_json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return 0
    totals = ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items())) or "none"
    print(f"chain profile {status['profile']}: {len(status['agents'])} agents; statuses: {totals}")
    for name, state in status["agents"].items():
        gaps = ", ".join(f"{a}-{b}" for a, b in state["open_gaps"]) or "none"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(state["counts"].items()))
        alert = state["last_alert"]
        last = (
            f"{alert['status']} at {alert.get('sequence', alert.get('missing'))}"
            if alert
            else "none"
        )
        print(f"  agent {name}: last sequence {state['last_sequence']}; open gaps: {gaps}")
        print(f"    counts: {counts}; last alert: {last}")
    return 0


def _chain_status_from_files(config: Config, agent: str | None) -> dict[str, Any]:
    """The chain state on disk: the checkpoint plus the WAL after it."""
    wal_dir = config.data_dir / "wal"
    epoch = read_epoch(wal_dir)[0] or ""  # damaged or missing: no checkpoint matches it
    stage = ChainStage(config.chain, config.data_dir)
    if wal_dir.is_dir() or checkpoint_path(config.data_dir).exists():
        stage.load(wal_dir, epoch)
    return stage.verifier.status(agent)


def cmd_dead_letter(path: str, action: str, sink_id: str, files: list[str], as_json: bool) -> int:
    """List, show or replay a sink's dead letters (``shipper.sinks.dead_letter``, ``replay``).

    Exit 0 when done (replay: every file delivered), 1 when a file could not be read, a replay
    left files behind, or the sink cannot replay; 2 for a sink or file that is not there."""
    from shipper.sinks.dead_letter import Letter, LetterError, letters
    from shipper.sinks.replay import CannotReplay, NoSuchLetter, replay

    config = _load(path)
    if config is None:
        return EX_CONFIG
    configure("warning")  # the report is the output; a sink's info entries are not
    if sink_id not in config.sinks:
        known = ", ".join(config.sinks) or "none"
        print(
            f"shipper dead-letter: no sink {sink_id!r} in {path} (sinks: {known})", file=sys.stderr
        )
        return 2
    if action == "replay":
        try:
            done = trio.run(replay, config, sink_id, files)
        except CannotReplay as exc:
            print(f"shipper dead-letter replay: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, NoSuchLetter) else 1
        events = sum(count for _, count in done.delivered)
        print(
            f"{len(done.delivered)} files ({events} events) replayed, {len(done.refused)} refused"
        )
        return 0 if done.complete else 1
    try:
        paths = letters(config.data_dir, sink_id)
    except OSError as exc:
        print(
            f"shipper dead-letter: cannot list the dead letters of {sink_id!r}: {exc}",
            file=sys.stderr,
        )
        return 1
    if action == "show":
        paths = [p for p in paths if p.name == files[0]]
        if not paths:
            print(
                f"shipper dead-letter: no file {files[0]!r} for sink {sink_id!r}", file=sys.stderr
            )
            return 2
    failed = False
    summaries: list[dict[str, object]] = []
    for letter_path in paths:
        try:
            letter = Letter.read(letter_path)
        except (LetterError, OSError) as exc:
            print(f"shipper dead-letter: {letter_path}: {exc}", file=sys.stderr)
            failed = True
            continue
        first = letter.details[0] if letter.details else {}
        if action == "show":
            for details, envelope in zip(letter.details, letter.envelopes, strict=True):
                if as_json:
                    print(orjson.dumps({**details, "envelope": orjson.loads(envelope)}).decode())
                else:
                    extra = {k: v for k, v in details.items() if k not in ("v", "sink")}
                    print(orjson.dumps(extra).decode())
                    print("  " + envelope.decode())
            continue
        summaries.append(
            {
                "file": letter.name,
                "events": len(letter.envelopes),
                "epoch": letter.epoch,
                "first": letter.first,
                "last": letter.last,
                **{k: v for k, v in first.items() if k not in ("v", "sink")},
            }
        )
    if action == "list" and as_json:
        print(orjson.dumps(summaries, option=orjson.OPT_INDENT_2).decode())
    elif action == "list":
        if not summaries and not failed:
            print(f"sink {sink_id}: no dead letters")
        for summary in summaries:
            status = f" (status {summary['status']})" if "status" in summary else ""
            print(
                f"{summary['file']}: {summary['events']} events, refused at "
                f"{summary.get('refused_at')}{status}: {summary.get('reason')}"
            )
    return 1 if failed else 0


_HEAD_RE = re.compile(r"sha256:[0-9a-f]{64}")


def _verify_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2) the combinations argparse cannot express."""
    if args.dir is not None:
        for flag, value in (
            ("--endpoint", args.endpoint),
            ("--region", args.region),
            ("--expect-head", args.expect_head),
        ):
            if value is not None:
                parser.error(f"verify: {flag} goes with --s3, not --dir")
    else:
        from shipper.s3 import S3Url

        try:
            S3Url.parse(args.s3)
        except ValueError as exc:
            parser.error(f"verify: --s3: {exc}")
    if args.expect_head is not None and not _HEAD_RE.fullmatch(args.expect_head):
        parser.error(
            f"verify: --expect-head: expected sha256:<64 hex digits>, got {args.expect_head!r}"
        )


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify an archive (``shipper.archive.verify``); print the report (text or JSON).

    Exit 0 when it is intact, 1 when a problem was found or it could not be read (one line on
    stderr says why)."""
    from pathlib import Path

    from shipper.archive.content import MAX_OBJECT_BYTES
    from shipper.archive.progress import progress_for
    from shipper.archive.store import ArchiveUnreadable, DirStore, S3Store
    from shipper.archive.verify import Report, verify_dir, verify_s3
    from shipper.s3 import S3Settings, S3Url, open_client

    profile = PROFILES[args.profile]
    progress = progress_for(sys.stderr)
    limit = args.max_object_bytes or MAX_OBJECT_BYTES

    async def verify() -> Report:
        if args.dir is not None:
            return await verify_dir(DirStore(Path(args.dir)), profile, progress, limit)
        url = S3Url.parse(args.s3)
        region = (
            args.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        async with open_client(S3Settings(region=region, endpoint=args.endpoint)) as client:
            return await verify_s3(
                S3Store(client, url), url, profile, args.expect_head, progress, limit
            )

    try:
        report = trio.run(verify)
    except (DestinationUnavailable, DestinationRejected, ArchiveUnreadable) as exc:
        print(f"shipper verify: cannot verify {args.s3 or args.dir}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.text())
    return 0 if report.intact else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "verify":
        _verify_usage(parser, args)
        return cmd_verify(args)
    if args.command == "validate":
        return cmd_validate(args.config, args.check_remote)
    if args.command == "buffer":
        return cmd_buffer(args.config, args.action, args.json)
    if args.command == "chain":
        return cmd_chain_status(args.config, args.agent, args.json, args.api, args.api_ca)
    if args.command == "top":
        from shipper.cli_top import cmd_top

        return cmd_top(args.api, args.config, args.once, args.api_ca)
    if args.command == "tap":
        return cli_tap.command(args)
    if args.command == "reload":
        return cli_reload.command(args)
    if args.command == "dead-letter":
        if args.action == "show" and len(args.files) != 1:
            parser.error("dead-letter show: name exactly one FILE (as listed)")
        if args.action == "list" and args.files:
            parser.error("dead-letter list: takes no FILE")
        return cmd_dead_letter(args.config, args.action, args.sink, args.files, args.json)
    return cmd_run(args.config)


if __name__ == "__main__":
    sys.exit(main())
