"""Command line: ``shipper run``, ``shipper validate`` (see README, "Command line").

Exit codes: 0 success; 1 runtime failure (cannot listen, crash); 2 usage error; 78 (EX_CONFIG)
invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from shipper import __version__
from shipper.config import Config, load_config
from shipper.errors import ConfigError, ListenError
from shipper.logging import configure, get_logger

EX_CONFIG = 78
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
    return parser


def _load(path: str) -> Config | None:
    """The config, or None after printing every problem to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return None


def cmd_validate(path: str) -> int:
    config = _load(path)
    if config is None:
        return EX_CONFIG
    print(f"{path}: ok ({len(config.sources)} sources, {len(config.sinks)} sinks)")
    return 0


def cmd_run(path: str) -> int:
    config = _load(path)
    if config is None:
        return EX_CONFIG
    configure(config.log_level)
    from shipper.shutdown import run_daemon

    failed = False
    try:
        trio.run(run_daemon, config)
    except* ListenError as group:
        for exc in _leaves(group):
            log.error("shipper_failed", error=str(exc))
        failed = True
    return 1 if failed else 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside a (nested) exception group."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return cmd_validate(args.config)
    return cmd_run(args.config)


if __name__ == "__main__":
    sys.exit(main())
