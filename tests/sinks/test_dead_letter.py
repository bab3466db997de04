"""The dead-letter area's files, and reading a batch's WAL range from envelope ids."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shipper.buffer.segment import Position
from shipper.events import Event
from shipper.sinks.base import Batch, position_of
from shipper.sinks.dead_letter import MAX_ANSWER, MAX_REASON, DeadLetters

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}


def envelope(position: Position, n: int) -> bytes:
    """An envelope with the id of ``position`` whose record holds ``n``."""
    event = Event("2026-11-23T00:00:00.000000Z", SOURCE, "a", orjson.dumps({"n": n}))
    return event.encode(str(position))


def test_a_refused_batch_is_kept_line_by_line_with_its_reason(tmp_path: Path) -> None:
    """Each refused envelope is one line holding the envelope unchanged, the sink, the reason
    and when, in a file named by the epoch and the batch's first and last ids."""
    batch = Batch.of([envelope(Position(3, 16 + 5 * n), n) for n in range(3)])
    path = DeadLetters(tmp_path, "hook").write(batch, "HTTP 400: bad field", "00aa")
    assert path == tmp_path / "dead_letter" / "hook" / "00aa-3-16-3-26.jsonl"
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["envelope"] for line in lines] == [orjson.loads(e) for e in batch.envelopes]
    assert {line["sink"] for line in lines} == {"hook"}
    assert {line["reason"] for line in lines} == {"HTTP 400: bad field"}
    assert all(line["v"] == 1 and line["refused_at"].endswith("Z") for line in lines)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_the_same_batch_refused_again_replaces_its_file(tmp_path: Path) -> None:
    """A batch refused again after a crash (same range) leaves its envelopes there once; a
    reason longer than MAX_REASON is cut."""
    letters = DeadLetters(tmp_path, "hook")
    batch = Batch.of([envelope(Position(1, 16), 1), envelope(Position(1, 99), 2)])
    letters.write(batch, "first", "00aa")
    path = letters.write(batch, "x" * (MAX_REASON + 10), "00aa")
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["envelope"]["record"]["n"] for line in lines] == [1, 2]
    assert {len(line["reason"]) for line in lines} == {MAX_REASON}
    assert list(path.parent.iterdir()) == [path]


def test_position_of_reads_the_id_without_parsing_the_envelope() -> None:
    """The position in an envelope's id is read from its bytes; a line without one is refused."""
    assert position_of(envelope(Position(12, 3456), 1)) == Position(12, 3456)
    batch = Batch.of([envelope(Position(2, 16), 1), envelope(Position(2, 80), 2)])
    assert (batch.first, batch.last) == (Position(2, 16), Position(2, 80))
    assert batch.size == sum(map(len, batch.envelopes))
    with pytest.raises(ValueError, match="not an envelope"):
        position_of(b'{"id":"1-16"}')
    with pytest.raises(ValueError, match="without a WAL id"):
        position_of(b'{"v":1,"received_at":"x"}')


def test_a_refusal_keeps_the_status_and_a_cut_answer_only_when_known(tmp_path: Path) -> None:
    """The destination's status and answer are on each line when given, the answer cut to
    MAX_ANSWER characters; a refusal without them has neither key."""
    letters = DeadLetters(tmp_path, "hook")
    batch = Batch.of([envelope(Position(1, 16), 1)])
    path = letters.write(batch, "HTTP 422", "00aa", status=422, answer="y" * (MAX_ANSWER + 5))
    (line,) = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert (line["status"], line["answer"]) == (422, "y" * MAX_ANSWER)
    other = Batch.of([envelope(Position(2, 16), 2)])
    (bare,) = [orjson.loads(x) for x in letters.write(other, "no", "00aa").read_bytes().split()]
    assert "status" not in bare
    assert "answer" not in bare
