"""The sink driver: everything about delivering the WAL to a sink that is not the sink's own.

One ``SinkDriver`` runs each configured sink (``shipper.sinks.base`` says what a sink does)::

    WAL cursor ─► reader task ─► batch ─► skip what the destination holds ─► deliver ─► ack
                  (one read        (events,                                    │
                   ahead)           bytes, age)            unavailable: retry ◄┤ rejected: dead
                                                           defect: restart   ◄┘ letter, then ack

Rules:

* **Reading.** A task of its own reads the sink's WAL cursor (``Reader``: ``read(max_bytes)``,
  ``ack(end)``), at most ``batching.max_bytes`` per read, one read ahead of the delivery.
* **Batching** (the sink's ``batching``): a batch holds at most ``max_events`` events and
  ``max_bytes`` of envelopes (or one envelope larger than that); reads are added to it, split
  where a limit falls (the rest of a read starts the next batch, and reads are added to it in
  turn: batches come out full, not as a full one and the rest of a read), and it is delivered
  once full, once ``max_age`` seconds have passed since its first event was read, or once the
  WAL is closed and read.
* **Redaction.** With a ``redact`` table (forwarding sinks only; ``shipper.redact``), each batch
  is redacted, in a worker thread, before the sink sees it; a dead letter keeps it as it was
  (a replay redacts it again on its way out).
* **Acknowledging** only what the destination confirmed: the end of the last whole read in a
  delivered batch (a read split over several batches is acknowledged with its last part). Reads
  that hold no event for this sink are acknowledged at once.
* **Resume.** After each ``open`` and before each retry, the driver asks the sink's
  ``resume_point`` and leaves out every envelope up to it (counted as ``already_delivered``):
  what the destination took before a crash, a restart or a failure mid-batch is not sent again.
* **Outcomes**, classified by the sink's ``retry_policy`` (``shipper.retry``):

  - delivered: counted (``events``, ``bytes``, ``batches``), then acknowledged;
  - unavailable: logged (``sink_write_failed`` from ``deliver``, ``sink_open_failed`` from
    ``open`` or ``resume_point``), counted (``retries``), and the same batch tried again after
    a capped exponential backoff with jitter, or after the destination's own hint if it is
    longer (``DestinationUnavailable.retry_after``, as HTTP's ``Retry-After``; bounded by the
    policy's ``max_retry_after``); nothing is acknowledged meanwhile. A rejection
    from ``open`` or ``resume_point`` (there is no batch to blame) is handled the same way;
  - rejected: the batch goes to the dead-letter area (``shipper.sinks.dead_letter``) with the
    reason (and the destination's ``status`` and ``answer``, when the ``DestinationRejected``
    carries them), durably, then it is acknowledged (``dead_letters`` counts its events; logged as
    ``sink_dead_lettered``). If the dead letter cannot be written, that is retried like an
    unavailable destination (``sink_dead_letter_failed``);
  - a defect (any other exception from the sink's code): logged with its traceback
    (``sink_defect``), the sink is closed and opened again after a backoff of its own
    (``restarts``), and the same batch is tried again. Neither the daemon nor the other sinks
    stop for it.

  Every failed try counts in ``failures``.
* **Health** (``health()``, a ``shipper.metrics.Health``: status, reason, since when on the
  monotonic clock): ``ok``; ``degraded`` while retrying an unavailable destination or after a
  dead letter; ``failing`` after ``FAILING_AFTER`` unavailable tries in a row, or a defect; the
  reason is the latest error. Back to ``ok`` at the next delivery (logged as ``sink_recovered``).
  The sink's own ``health()`` is combined with it: the worse one is reported.
* **Shutdown.** When the WAL is closed and read, the driver delivers what is left, closes the
  sink and returns. So it does after ``stop`` (a reload removed or changed the sink): it reads no
  more, and delivers and acknowledges every read it has. Cancelled at any point (a retry, a delivery), it has acknowledged nothing it
  did not deliver: the rest comes again at the next start. The sink is closed, shielded.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from shipper import heap
from shipper.buffer.segment import Position
from shipper.buffer.wal import ReadBatch
from shipper.events import DELIVERY_ALERT, Event, alert_event
from shipper.logging import get_logger
from shipper.metrics import CounterSet, Health, Registry, Status
from shipper.redact import Redaction
from shipper.retry import Backoff, Outcome
from shipper.sinks.base import Batch, Counting, Sink, position_of
from shipper.sinks.dead_letter import DeadLetters

log = get_logger("shipper.sinks")

#: What the driver counts for each sink (``sink_<name>`` metrics, labelled with the sink's id;
#: a sink may declare counters of its own beside these, ``shipper.sinks.base.Counting``).
SINK_COUNTERS: dict[str, str] = {
    "events": "Events the destination confirmed",
    "bytes": "Bytes of envelopes the destination confirmed",
    "batches": "Batches the destination confirmed",
    "retries": "Tries again after the destination was unavailable",
    "failures": "Failed tries, whatever the cause",
    "dead_letters": "Events the destination refused for good, kept in the dead-letter area",
    "dead_letter_errors": "Failures writing to the dead-letter area",
    "restarts": "Restarts after a defect in the sink's code",
    "already_delivered": "Events left out at resume: the destination held them already",
}
#: Unavailable tries in a row after which a sink's health is ``failing`` rather than
#: ``degraded``.
FAILING_AFTER = 5
_DELIVERY_ALERT_MARK = b'"action":"%s"' % DELIVERY_ALERT.encode()
_RANK: dict[Status, int] = {"ok": 0, "degraded": 1, "failing": 2}


class Reader(Protocol):
    """A sink's cursor on the WAL (``shipper.buffer.wal.WalReader``)."""

    async def read(self, max_bytes: int) -> ReadBatch | None: ...

    async def ack(self, end: Position) -> None: ...


@dataclass(slots=True)
class _Read:
    """A read of the WAL not yet in a batch: its envelopes, their bytes, the position to
    acknowledge once all of them are delivered, and when it was read."""

    envelopes: list[bytes]
    size: int
    end: Position
    at: float


class SinkDriver:
    """Runs one sink: reads its WAL cursor, batches, delivers, retries, dead-letters, restarts,
    acknowledges (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        data_dir: Path,
        emit: Callable[[Event], bool] | None = None,
        redact: Redaction | None = None,
    ) -> None:
        self.sink = sink
        self.redact = redact
        self._emit = emit
        self.id = sink.id
        own = sink.own_counters if isinstance(sink, Counting) else {}
        self._declared = {**SINK_COUNTERS, **own}
        self.counters = self._counters(Registry())
        self.dead_letters = DeadLetters(data_dir, sink.id)
        self._health = Health(since=time.monotonic())
        self._unavailable = 0  # unavailable tries in a row
        self._epoch = ""
        self._opened = False
        self._resume: Position | None = None  # the last position the destination holds
        self._resume_known = False  # whether _resume was asked since the last open or failure
        self._queue: deque[_Read] = deque()  # reads received and not yet in a batch
        self._reading_done = False
        self._reading = trio.CancelScope()  # cancelled by stop(): no more reads

    def register_metrics(self, registry: Registry) -> None:
        """Count into ``registry`` from now on, and tell it this sink's health (``sink.<id>``)."""
        counters = self._counters(registry)
        counters.restore(self.counters.as_dict())
        self.counters = counters
        registry.health(f"sink.{self.id}", self.health)

    def _counters(self, registry: Registry) -> CounterSet:
        """The sink's counters in ``registry`` (the driver's and its own), handed to the sink
        too if it counts something itself."""
        counters = CounterSet(registry, "sink", self.id, self._declared)
        if isinstance(self.sink, Counting):
            self.sink.count_into(counters)
        return counters

    def health(self) -> Health:
        """The worse of what the driver saw of the deliveries and what the sink says."""
        try:
            own = self.sink.health()
        except Exception as exc:  # a defect in the sink: it says nothing, and that is failing
            own = Health("failing", f"health() raised {exc!r}", self._health.since)
        return own if _RANK[own.status] > _RANK[self._health.status] else self._health

    async def run(
        self,
        reader: Reader,
        epoch: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver everything the WAL holds for this sink, acknowledging what its destination
        confirmed; return when the WAL is closed and read to its end. ``epoch``: the WAL's
        (``Wal.epoch``), which the sink's ``open`` is given."""
        self._epoch = epoch
        self._queue.clear()
        self._reading_done = False
        task_status.started()
        send, receive = trio.open_memory_channel[ReadBatch](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, reader, send)
                while (gathered := await self._gather(receive)) is not None:
                    envelopes, size, end = gathered
                    if envelopes:
                        await self._settle(envelopes, size)
                    if end is not None:
                        await reader.ack(end)
        finally:
            if self._opened:
                with trio.CancelScope(shield=True):
                    await self._close()

    def stop(self) -> None:
        """Finish early (a reload removed or changed the sink): read no more, deliver and
        acknowledge what was read, close the sink, and return from ``run``. A read cancelled on
        its way is neither delivered nor acknowledged: a reader started at the cursor reads it
        again."""
        self._reading.cancel()

    async def _read(self, reader: Reader, send: trio.MemorySendChannel[ReadBatch]) -> None:
        async with send:
            with self._reading:
                while (read := await reader.read(self.sink.batching.max_bytes)) is not None:
                    await send.send(read)

    # --- batching -------------------------------------------------------------------------------

    async def _gather(
        self, receive: trio.MemoryReceiveChannel[ReadBatch]
    ) -> tuple[list[bytes], int, Position | None] | None:
        """The next batch: its envelopes, their bytes, and the position to acknowledge once it
        is delivered (None: it ends inside a read); None once the WAL is closed and read."""
        limits = self.sink.batching
        taken: list[bytes] = []
        size = 0
        end: Position | None = None
        deadline = math.inf
        while len(taken) < limits.max_events and size < limits.max_bytes:
            if not self._queue:
                if end is not None and not taken:
                    break  # reads without events for this sink: acknowledge them now
                read = await self._receive(receive, deadline if taken else math.inf)
                if read is None:
                    break  # the batch is old enough, or the WAL is closed and read
                size_read = sum(map(len, read.envelopes))
                self._queue.append(_Read(read.envelopes, size_read, read.end, trio.current_time()))
            head = self._queue[0]
            if not taken and head.envelopes:
                deadline = head.at + limits.max_age
            room = limits.max_events - len(taken)
            if len(head.envelopes) > room or size + head.size > limits.max_bytes:
                # Split by events or bytes: the end of the read waits for its last part.
                fits = bisect.bisect_right(
                    list(itertools.accumulate(map(len, head.envelopes[:room]))),
                    limits.max_bytes - size,
                )
                if not fits and not taken:
                    fits = 1  # one envelope larger than max_bytes goes alone
                part, head.envelopes = head.envelopes[:fits], head.envelopes[fits:]
                part_size = sum(map(len, part))
                head.size -= part_size
                taken += part
                size += part_size
                if head.envelopes:
                    break
            self._queue.popleft()
            if taken:
                taken += head.envelopes
            else:
                taken = head.envelopes  # (no copy: the read is not used elsewhere)
            size += head.size
            end = head.end
        if not taken and end is None:
            return None
        return taken, size, end

    async def _receive(
        self, receive: trio.MemoryReceiveChannel[ReadBatch], deadline: float
    ) -> ReadBatch | None:
        """The next read: one that is ready, else one that comes before ``deadline``; None if
        none came, or the WAL is closed and read."""
        if self._reading_done:
            return None
        try:
            return receive.receive_nowait()
        except trio.WouldBlock:
            pass
        except trio.EndOfChannel:
            self._reading_done = True
            return None
        if deadline <= trio.current_time():
            return None
        with trio.move_on_at(deadline):
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                self._reading_done = True
        return None

    # --- delivering -----------------------------------------------------------------------------

    async def _settle(self, envelopes: list[bytes], size: int) -> None:
        """Deliver ``envelopes`` or dead-letter them, however long that takes: open the sink if
        it is not, leave out what the destination holds, retry, restart."""
        policy = self.sink.retry_policy
        retry = policy.backoff()
        restart = policy.restart_backoff()
        while True:
            step = "open"
            try:
                if not self._opened:
                    await self.sink.open(self._epoch)
                    self._opened = True
                    heap.settle()
                    self._resume_known = False
                if not self._resume_known:
                    step = "resume_point"
                    self._resume = await self.sink.resume_point()
                    self._resume_known = True
                envelopes, size = self._skip(envelopes, size)
                if not envelopes:
                    return
                step = "deliver"
                batch = Batch.of(envelopes, size)
                await self.sink.deliver(await redacted(batch, self.redact))
            except Exception as exc:
                try:
                    outcome = policy.classify(exc)
                except Exception:  # the policy is the sink's code too
                    outcome = Outcome.DEFECT
                if outcome is Outcome.REJECT and step == "deliver":
                    await self._dead_letter(batch, exc, retry)
                    return
                if outcome is Outcome.DEFECT:
                    await self._restart(exc, step, restart)
                else:
                    await self._retry(exc, step, len(envelopes), retry)
                continue
            self._delivered(batch)
            return

    def _skip(self, envelopes: list[bytes], size: int) -> tuple[list[bytes], int]:
        """``envelopes`` without those the destination holds already (up to ``_resume``)."""
        resume = self._resume
        if resume is None:
            return envelopes, size
        held = bisect.bisect_right(envelopes, resume, key=position_of)
        if held < len(envelopes):
            self._resume = None  # positions only grow: it holds nothing after this
        if not held:
            return envelopes, size
        self.counters["already_delivered"] += held
        log.info("sink_already_delivered", sink=self.id, events=held, up_to=str(resume))
        kept = envelopes[held:]
        return kept, sum(map(len, kept))

    def _delivered(self, batch: Batch) -> None:
        self.counters["events"] += len(batch.envelopes)
        self.counters["bytes"] += batch.size
        self.counters["batches"] += 1
        self._unavailable = 0
        if self._health.status != "ok":
            log.info(
                "sink_recovered",
                sink=self.id,
                was=self._health.status,
                seconds=round(time.monotonic() - self._health.since, 3),
            )
            self._set_health("ok", "")

    async def _retry(self, exc: Exception, step: str, events: int, backoff: Backoff) -> None:
        """The destination is unavailable: wait, then try the same batch again (asking the
        destination first what it holds: it may have taken part of it)."""
        self._resume_known = False
        self._unavailable += 1
        self.counters["failures"] += 1
        self.counters["retries"] += 1
        error = str(exc) or type(exc).__name__
        self._set_health("failing" if self._unavailable >= FAILING_AFTER else "degraded", error)
        wait = self.sink.retry_policy.wait(backoff, exc)
        log.error(
            "sink_write_failed" if step == "deliver" else "sink_open_failed",
            sink=self.id,
            kind=self.sink.kind,
            step=step,
            error=error,
            events=events,
            retry_in=round(wait, 3),
        )
        await trio.sleep(wait)

    async def _restart(self, exc: Exception, step: str, backoff: Backoff) -> None:
        """A defect in the sink's code: close it, and open it again after a pause."""
        self._resume_known = False
        self.counters["failures"] += 1
        self.counters["restarts"] += 1
        error = f"{type(exc).__name__}: {exc}"[:1000]
        self._set_health("failing", error)
        wait = backoff.next()
        log.error(
            "sink_defect",
            sink=self.id,
            kind=self.sink.kind,
            step=step,
            error=error,
            restart_in=round(wait, 3),
            exc_info=exc,
        )
        await self._close()
        await trio.sleep(wait)

    async def _dead_letter(self, batch: Batch, exc: Exception, backoff: Backoff) -> None:
        """The destination refused ``batch`` for good: keep it in the dead-letter area (trying
        again until the disk takes it), then the caller acknowledges it."""
        reason = str(exc) or type(exc).__name__
        status = getattr(exc, "status", None)
        answer = getattr(exc, "answer", None)
        details = (
            status if isinstance(status, int | str) else None,
            answer if isinstance(answer, str) else None,
        )
        while True:
            try:
                path = await trio.to_thread.run_sync(
                    self.dead_letters.write, batch, reason, self._epoch, *details
                )
            except OSError as error:
                self.counters["dead_letter_errors"] += 1
                wait = backoff.next()
                log.error(
                    "sink_dead_letter_failed",
                    sink=self.id,
                    error=str(error),
                    events=len(batch.envelopes),
                    retry_in=round(wait, 3),
                )
                await trio.sleep(wait)
                continue
            break
        self._unavailable = 0
        self.counters["failures"] += 1
        self.counters["dead_letters"] += len(batch.envelopes)
        self._set_health("degraded", reason)
        log.error(
            "sink_dead_lettered",
            sink=self.id,
            kind=self.sink.kind,
            reason=reason,
            events=len(batch.envelopes),
            first=str(batch.first),
            last=str(batch.last),
            path=str(path),
        )
        if self._emit is not None and not all(
            _DELIVERY_ALERT_MARK in envelope for envelope in batch.envelopes
        ):  # (an alert about refused alerts only would be refused in turn, without end)
            self._emit(
                alert_event(
                    DELIVERY_ALERT,
                    None,
                    {
                        "severity": "high",
                        "sink": self.id,
                        "kind": self.sink.kind,
                        "reason": reason[:2000],
                        "events": len(batch.envelopes),
                        "first": str(batch.first),
                        "last": str(batch.last),
                        "dead_letter": path.name,
                    },
                )
            )

    async def _close(self) -> None:
        """Close the sink; a defect closing it is logged, never raised."""
        self._opened = False
        try:
            await self.sink.close()
        except Exception as exc:
            self.counters["failures"] += 1
            log.error(
                "sink_close_failed",
                sink=self.id,
                kind=self.sink.kind,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )

    def _set_health(self, status: Status, reason: str) -> None:
        since = self._health.since if status == self._health.status else time.monotonic()
        self._health = Health(status, reason, since)


async def redacted(batch: Batch, redact: Redaction | None) -> Batch:
    """``batch`` as a sink may see it: redacted (in a worker thread) when its config has a
    ``redact`` table; the envelopes given stay as they were (for a dead letter)."""
    if redact is None:
        return batch
    envelopes = await trio.to_thread.run_sync(lambda: [redact.apply(e) for e in batch.envelopes])
    return Batch(envelopes, batch.first, batch.last, sum(map(len, envelopes)))
