"""The sink contract: what a sink does, and what the driver (``shipper.sinks.driver``) does for it.

A sink knows its destination and nothing else. It says

* how to ``open`` it (``epoch`` names the WAL's lifetime: positions of another epoch say
  nothing about this one's),
* what the destination already holds (``resume_point``: the WAL position of the last event it
  holds, or None if it holds none of this epoch's or cannot tell),
* how to ``deliver`` one ``Batch``: return once the destination confirmed all of it (durably),
* how to ``close`` it,
* its ``health()`` (``shipper.metrics.Health``): what only it can know of its destination (the
  driver adds what it sees of the deliveries, and the worse of the two is reported),
* optionally, counters of its own (``Counting``), kept beside the driver's,

and raises ``DestinationUnavailable`` ("try again later") or ``DestinationRejected`` ("this
will never pass") when its destination says so, translated from the library's exceptions at the
boundary. Its ``retry_policy`` (``shipper.retry.RetryPolicy``) classifies what it raises; a sink
may bring its own. Its ``batching`` says how large and how old a batch may grow.

The driver does the rest, the same for every sink: reading the WAL, skipping what
``resume_point`` says the destination holds, batching, retries with backoff, dead letters,
acknowledging only what was confirmed, counters and health, and restarting a sink whose code
raised anything else (a defect) without stopping the daemon or the other sinks.

Rules a sink keeps:

* ``deliver`` may be called again with a batch (or part of one) that it took before: after a
  failure, after a restart, after a crash before the acknowledgement. Before each retry and after
  each ``open`` the driver asks ``resume_point`` and leaves out what the destination holds, so a
  sink that answers it truthfully archives each event once; one that cannot tell (None) delivers
  at least once.
* A ``deliver`` that fails must not leave a torn event behind; a part of the batch it completed
  may stay (``resume_point`` then says so).
* ``open`` may be called again after ``close`` (a restart); ``close`` must not raise for a sink
  that was never opened, and is called with cancellation shielded.

What a sink may have of the daemon is its ``SinkContext``, given to its config's ``build``: the
chain profile (to read the chain fields of records) and ``emit``, which hands an event shipper
raises itself (an alert, an archive seal) to the WAL, never blocking. Nothing else: a sink runs
the same in a process of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from shipper.buffer.segment import Position
from shipper.events import ENVELOPE_HEAD
from shipper.logging import Throttle, get_logger
from shipper.metrics import CounterSet, Health
from shipper.retry import RetryPolicy

if TYPE_CHECKING:
    from shipper.chain import Profile
    from shipper.events import Event

log = get_logger("shipper.sinks")

_ID_START = len(ENVELOPE_HEAD) + len(b'"id":"')


@dataclass(frozen=True, slots=True)
class Batch:
    """Envelopes to deliver, in WAL order, with their WAL range: the positions (ids) of the
    first and the last; ``size`` is the envelopes' bytes (without line ends)."""

    envelopes: list[bytes]
    first: Position
    last: Position
    size: int

    @classmethod
    def of(cls, envelopes: list[bytes], size: int | None = None) -> Batch:
        """A batch of ``envelopes`` (at least one), its range read from their ids."""
        return cls(
            envelopes,
            position_of(envelopes[0]),
            position_of(envelopes[-1]),
            sum(map(len, envelopes)) if size is None else size,
        )


@dataclass(frozen=True)
class BatchSettings:
    """How a sink's batches are made: at most ``max_events`` events and ``max_bytes`` of
    envelopes (a single larger envelope goes alone; the driver splits reads where a limit
    falls and fills the batch after up from the next reads), delivered at the
    latest ``max_age`` seconds after their first event was read (0: as soon as what the WAL
    holds right now is read)."""

    max_events: int = 1000
    max_bytes: int = 1024 * 1024
    max_age: float = 1.0

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1 or self.max_age < 0:
            raise ValueError(f"batches must hold something and not age backwards: {self}")


def _nowhere(event: Event) -> bool:
    return False


@dataclass(frozen=True)
class SinkContext:
    """What a sink has of the daemon: the chain ``profile``, and ``emit`` (an event shipper
    raises, to the WAL; False when it could not be queued, as during shutdown: counted and
    logged by the daemon, never blocking)."""

    profile: Profile
    emit: Callable[[Event], bool] = _nowhere


#: What ``emitted_dropped`` counts (``writer_emitted_dropped``: in the daemon, and in each sink
#: process, whose count the daemon adds to its own).
EMITTED_DROPPED = "Events raised by sinks (seals, alerts) not taken: queue full or stopping"


class EmitDrops:
    """What an ``emit`` does with an event it could not queue (``SinkContext``): count it in
    ``counters["emitted_dropped"]`` and log it (``emitted_event_dropped``, with ``fields``), at
    most once a second: a full queue drops events in bursts."""

    def __init__(self, counters: MutableMapping[str, int], **fields: Any) -> None:
        self._counters = counters
        self._fields = fields
        self._log = Throttle(1)

    def __call__(self, event: Event) -> None:
        self._counters["emitted_dropped"] += 1
        if self._log.allow(trio.current_time()) is not None:
            log.warning(
                "emitted_event_dropped",
                record=(event.record_json or b"")[:200].decode(errors="replace"),
                dropped=self._counters["emitted_dropped"],
                **self._fields,
            )


class Sink(Protocol):
    """What a sink implements (see the module docstring for the rules)."""

    id: str
    kind: str
    retry_policy: RetryPolicy
    batching: BatchSettings

    async def open(self, epoch: str) -> None: ...

    async def resume_point(self) -> Position | None: ...

    async def deliver(self, batch: Batch) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> Health: ...


@runtime_checkable
class Counting(Protocol):
    """A sink that counts something of its own beside what the driver counts (a filter's
    events left out, say): ``own_counters`` declares the names (with their help text), metrics
    ``sink_<name>`` labelled with the sink's id; the driver hands the sink its ``CounterSet``
    through ``count_into`` (again whenever it replaces it), and the sink counts there."""

    own_counters: Mapping[str, str]

    def count_into(self, counters: CounterSet) -> None: ...


class SinkBase:
    """Defaults for a sink: the default retry policy and batching, nothing to resume from, no
    health of its own beyond what the driver sees, nothing to open or close."""

    kind: str = "sink"
    retry_policy: RetryPolicy = RetryPolicy()
    batching: BatchSettings = BatchSettings()

    def __init__(self, sink_id: str) -> None:
        self.id = sink_id

    async def open(self, epoch: str) -> None:
        return None

    async def resume_point(self) -> Position | None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> Health:
        return _OK


_OK = Health()


def position_of(envelope: bytes) -> Position:
    """The WAL position in an envelope's id (``{"v":1,"id":"<segment>-<offset>",...``), read
    from the bytes without parsing the JSON. Raises ValueError if it has no such id."""
    if not envelope.startswith(ENVELOPE_HEAD):
        raise ValueError(f"not an envelope: {envelope[:30]!r}")
    end = envelope.find(b'"', _ID_START)
    segment, dash, offset = envelope[_ID_START:end].partition(b"-")
    if end < 0 or not dash or envelope[_ID_START - 6 : _ID_START] != b'"id":"':
        raise ValueError(f"envelope without a WAL id: {envelope[:40]!r}")
    return Position(int(segment), int(offset))
