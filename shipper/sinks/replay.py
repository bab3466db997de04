"""``shipper dead-letter replay``: sending what a receiver refused again, once it is fixed.

Each dead-letter file (``shipper.sinks.dead_letter``) of the sink is one batch its destination
refused. A replay builds the sink afresh from the current config (so a corrected URL, key or
mapping applies), opens it with the file's WAL epoch, redacts the batch as the daemon would, and
delivers it in one try:

* delivered: the file moves to ``replayed/`` beside it (``mark_replayed``), durably, so it is
  sent once and kept (if the disk refuses the move, the replay stops there and says so: the
  file was delivered and would be sent again);
* refused again (the sink's ``retry_policy`` says reject): the file stays, the reason is
  reported, and the next file is tried;
* unavailable, too slow, or a defect: the replay stops there (the files left stay), since the
  next ones would meet the same.

Files go oldest first. Only forwarding sinks replay: an archive sink's events must enter its
archive in WAL order (a manifest entry, a file of its own), which a late batch cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from shipper.config import Config
from shipper.events import Event
from shipper.retry import Outcome
from shipper.sinks.base import Batch, Sink, SinkContext
from shipper.sinks.dead_letter import REPLAYED, Letter, LetterError, letters, mark_replayed
from shipper.sinks.driver import redacted

#: How long one file's delivery may take before the replay gives up on the destination.
REPLAY_SECONDS = 120.0


@dataclass(slots=True)
class Replayed:
    """What a replay did: files delivered (their new paths and events), files refused again
    (with the reason), and why it stopped early, if it did."""

    delivered: list[tuple[Path, int]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return not self.refused and self.stopped is None


class CannotReplay(Exception):
    """The replay cannot start: no such sink, an archive sink, a named file that is not one of
    its dead letters, or a dead-letter folder that cannot be read (the operator's to fix;
    nothing was sent)."""


class NoSuchLetter(CannotReplay):
    """A sink or a dead-letter file the command names is not there (a usage error)."""


async def replay(
    config: Config,
    sink_id: str,
    names: Sequence[str] = (),
    report: Callable[[str], None] = print,
) -> Replayed:
    """Replay ``sink_id``'s dead letters (all, or the files ``names``), saying what happens
    through ``report``, one line per file."""
    sink_config = config.sinks.get(sink_id)
    if sink_config is None:
        known = ", ".join(config.sinks) or "none"
        raise NoSuchLetter(f"no sink {sink_id!r} in the config (sinks: {known})")
    if not sink_config.forwards:
        raise CannotReplay(
            f"sink {sink_id!r} is a {sink_config.kind} archive: its dead letters are kept to be "
            "read, not replayed (a late batch cannot enter the archive in WAL order)"
        )
    try:
        paths = letters(config.data_dir, sink_id)
    except OSError as exc:
        raise CannotReplay(f"cannot list the dead letters of sink {sink_id!r}: {exc}") from exc
    if names:
        by_name = {path.name: path for path in paths}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise NoSuchLetter(f"not a dead letter of sink {sink_id!r}: {', '.join(unknown)}")
        paths = [by_name[name] for name in names]
    done = Replayed()
    sink: Sink = sink_config.build(SinkContext(config.chain.profile_fields, _not_emitted))
    epoch: str | None = None
    try:
        for path in paths:
            try:
                letter = await trio.to_thread.run_sync(Letter.read, path)
            except (LetterError, OSError) as exc:
                done.refused.append((path, f"unreadable: {exc}"))
                report(f"skipped {path.name}: unreadable: {exc}")
                continue
            batch = await redacted(Batch.of(letter.envelopes), sink_config.redact)
            try:
                with trio.fail_after(REPLAY_SECONDS):
                    if epoch != letter.epoch:
                        if epoch is not None:
                            await sink.close()
                        epoch = None
                        await sink.open(letter.epoch)
                        epoch = letter.epoch
                    await sink.deliver(batch)
            except trio.TooSlowError:
                done.stopped = f"{path.name}: no answer in {REPLAY_SECONDS:g} s"
                break
            except Exception as exc:
                outcome = sink.retry_policy.classify(exc)
                if outcome is Outcome.REJECT:
                    done.refused.append((path, str(exc)))
                    report(f"refused again {path.name}: {exc}")
                    continue
                what = "unavailable" if outcome is Outcome.RETRY else "failed (a defect)"
                done.stopped = f"{path.name}: {what}: {type(exc).__name__}: {exc}"
                break
            try:
                moved = await trio.to_thread.run_sync(mark_replayed, path)
            except OSError as exc:  # a full or read-only disk: delivered, but still in place
                done.stopped = (
                    f"{path.name}: delivered, but not moved to {REPLAYED}/ "
                    f"({exc.strerror or exc}): remove it by hand, or a replay sends it again"
                )
                break
            done.delivered.append((moved, len(letter.envelopes)))
            report(f"replayed {path.name}: {len(letter.envelopes)} events")
    finally:
        with trio.CancelScope(shield=True):
            await sink.close()
    if done.stopped is not None:
        report(f"stopped at {done.stopped}; the files left stay for a later replay")
    return done


def _not_emitted(event: Event) -> bool:
    """A replay runs beside the daemon, not in it: an event a sink would raise has no WAL to go
    to here (the forwarding sinks raise none of their own; their driver's alerts are the
    daemon's)."""
    return False
