"""The ``webhook`` sink against a real HTTP(S) receiver: the body, the Standard Webhooks
signature (checked by the reference verifier), compression, credentials, TLS, the filter,
batching, retries and Retry-After, dead letters, and a receiver that goes away."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import hmac
import textwrap
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shipper.chain import SEED
from shipper.cli import main
from shipper.config import parse_config
from shipper.errors import ConfigError, DestinationRejected, DestinationUnavailable
from shipper.events import DELIVERY_ALERT, Event, alert_event
from shipper.sinks.base import Batch, SinkContext
from shipper.sinks.driver import SinkDriver
from shipper.sinks.webhook import WebhookSink, WebhookSinkConfig, retry_after
from tests.conftest import REPO, LogCapture, TlsFiles, free_port, wait_until
from tests.sinks.contract import SINK, Watched, entries, numbers, open_wal, reopen
from tests.sinks.memory import FAST
from tests.test_config import EXAMPLE_ENV
from tests.webhooks import (
    Receiver,
    hook,
    hook_config,
    new_secret,
    receiving,
    server_context,
)

SOURCE = {"id": "agents", "kind": "json_tls", "peer": "127.0.0.1:1"}
EPOCH = "00aa00aa00aa00aa"
#: Long enough never to pass in a test on the mock clock: the clock jumps to the nearest
#: deadline only while every task waits (a batch's age, a retry's backoff).
NEVER = "1h"


def envelope(offset: int, **record: object) -> bytes:
    """An envelope at WAL position 1-``offset`` whose record is ``record``."""
    event = Event("2026-11-23T00:00:00.000000Z", SOURCE, "a", orjson.dumps(record))
    return event.encode(f"1-{offset}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver over plain HTTP on 127.0.0.1."""
    with receiving() as running:
        yield running


@pytest.fixture
def https_receiver(tls_files: TlsFiles) -> Iterator[Receiver]:
    """A receiver over HTTPS, its certificate (for 127.0.0.1) signed by the test CA."""
    with receiving(server_context(tls_files.server_pem, tls_files.server_key)) as running:
        yield running


@pytest.fixture
def slow_autojump() -> trio.testing.MockClock:
    """A mock clock that jumps to the next deadline once every task has waited 0.3 s of real
    time: the receiver's thread answers well within that, so only real waits are skipped."""
    return trio.testing.MockClock(autojump_threshold=0.3)


async def deliver_once(sink: WebhookSink, batch: Batch) -> None:
    """Open the sink, deliver ``batch``, close it."""
    await sink.open(EPOCH)
    try:
        await sink.deliver(batch)
    finally:
        await sink.close()


# --- the request ------------------------------------------------------------------------------


async def test_the_body_is_the_envelopes_as_the_wal_holds_them_signed_for_the_reference_verifier(
    https_receiver: Receiver, tls_files: TlsFiles
) -> None:
    """Over HTTPS verified with the configured CA, the body is the WAL's envelope bytes in a
    JSON array, its webhook-id names the sink, epoch and range, and the standardwebhooks
    verifier accepts its signature with the secret (and refuses it with another)."""
    secret = new_secret()
    batch = Batch.of([envelope(16 + 100 * n, n=n, text="é|\\\n") for n in range(3)])
    sink = hook(https_receiver.url, signing_secret=secret, tls={"ca": str(tls_files.ca_pem)})
    await deliver_once(sink, batch)
    (request,) = https_receiver.requests
    assert request.body == b"[" + b",".join(batch.envelopes) + b"]"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == f"hook:{EPOCH}:1-16:1-216"
    assert request.headers["user-agent"].startswith("shipper/")
    verified = Webhook(secret).verify(request.body, request.headers)
    assert [item["record"]["n"] for item in verified] == [0, 1, 2]
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, request.headers)


async def test_gzip_credentials_and_configured_headers_go_with_the_request(
    receiver: Receiver,
) -> None:
    """With gzip the body is compressed (Content-Encoding) and signed before compression; a
    bearer token, a basic user and password and headers from the environment are sent."""
    secret = new_secret()
    env = {"TOKEN": "t0k3n", "TEAM": "blue", "PASSWORD": "pa:ss"}
    batch = Batch.of([envelope(16, n=1)])
    await deliver_once(
        hook(
            receiver.url,
            env,
            compression="gzip",
            signing_secret=secret,
            auth={"strategy": "bearer", "token": "${TOKEN}"},
            headers={"X-Team": "${TEAM}"},
        ),
        batch,
    )
    await deliver_once(
        hook(receiver.url, env, auth={"strategy": "basic", "user": "u", "password": "${PASSWORD}"}),
        batch,
    )
    zipped, basic = receiver.requests
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.raw) == b"[" + batch.envelopes[0] + b"]"
    assert Webhook(secret).verify(zipped.body, zipped.headers)
    assert zipped.headers["authorization"] == "Bearer t0k3n"
    assert zipped.headers["x-team"] == "blue"
    assert basic.headers["authorization"] == "Basic dTpwYTpzcw=="  # u:pa:ss
    assert "webhook-signature" not in basic.headers
    assert basic.raw == b"[" + batch.envelopes[0] + b"]"


async def test_a_receiver_whose_certificate_is_not_trusted_is_unavailable(
    https_receiver: Receiver,
) -> None:
    """Without the CA that signed the receiver's certificate the sink refuses the connection
    (the system's CAs do not know the test CA), as a destination to try again later."""
    with pytest.raises(DestinationUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await deliver_once(hook(https_receiver.url), Batch.of([envelope(16, n=1)]))
    assert https_receiver.requests == []


async def test_a_ca_file_gone_since_the_config_was_read_is_unavailable_not_a_defect(
    https_receiver: Receiver, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """A CA file removed after the config was validated makes open fail as an unavailable
    destination (retried until the operator puts it back), not as a defect of the sink."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls_files.ca_pem.read_bytes())
    sink = hook(https_receiver.url, tls={"ca": str(ca)})
    ca.unlink()
    with pytest.raises(DestinationUnavailable, match="cannot use the TLS files"):
        await sink.open(EPOCH)
    await sink.close()


# --- answers ----------------------------------------------------------------------------------


async def test_each_answer_means_what_http_says(receiver: Receiver) -> None:
    """400 and 301 are refusals carrying the status and the answer; 429 and 503 are
    unavailable with their Retry-After (seconds or a date); no listener is unavailable."""
    batch = Batch.of([envelope(16, n=1)])
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    receiver.script = [
        (400, {}, '{"error":"field x"}' + "y" * 5000),
        (301, {"Location": "/elsewhere"}, ""),
        (429, {"Retry-After": "7"}, ""),
        (503, {"Retry-After": later}, ""),
    ]
    with pytest.raises(DestinationRejected) as refused:
        await deliver_once(hook(receiver.url), batch)
    assert refused.value.status == 400
    assert refused.value.answer is not None
    assert refused.value.answer.startswith('{"error":"field x"}')
    assert len(refused.value.answer) == 4096
    assert 'HTTP 400 BAD REQUEST: {"error":"field x"}yyy' in str(refused.value)
    assert len(str(refused.value)) < 300  # the reason quotes the answer's start only
    assert "/hook" not in str(refused.value)  # the URL's path may hold a token
    with pytest.raises(DestinationRejected) as moved:
        await deliver_once(hook(receiver.url), batch)
    assert moved.value.status == 301
    with pytest.raises(DestinationUnavailable) as throttled:
        await deliver_once(hook(receiver.url), batch)
    assert throttled.value.retry_after == 7.0
    with pytest.raises(DestinationUnavailable) as busy:
        await deliver_once(hook(receiver.url), batch)
    assert busy.value.retry_after is not None
    assert 100 < busy.value.retry_after <= 121
    with pytest.raises(DestinationUnavailable, match="ConnectError"):
        await deliver_once(hook(f"http://127.0.0.1:{free_port()}/hook"), batch)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is delay seconds or an HTTP date (a past one is no wait); anything else is
    no hint."""
    now = 1_795_000_000.0
    assert retry_after("120", now) == 120.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after("9" * 40, now) == float("inf")
    assert retry_after("soon", now) is None
    assert retry_after("-5", now) is None
    assert retry_after(None, now) is None


# --- the filter -------------------------------------------------------------------------------


async def test_match_sends_only_the_events_it_names_and_counts_the_rest(
    receiver: Receiver,
) -> None:
    """A hook for denials and alerts of the daemon gets only those; the others are counted as
    filtered, and a batch of none of them sends no request at all."""
    alert = alert_event(DELIVERY_ALERT, None, {"severity": "high"}).encode("1-900")
    batch = Batch.of(
        [
            envelope(16, effect="deny", n=1),
            envelope(116, effect="allow", n=2),
            envelope(216, effect="deny", n=3),
            alert,
        ]
    )
    denials = hook(receiver.url, match={"record.effect": "deny"})
    await deliver_once(denials, batch)
    alerts = hook(
        receiver.url, match={"source": {"id": "shipper"}, "record.action": [DELIVERY_ALERT]}
    )
    await deliver_once(alerts, batch)
    await deliver_once(alerts, Batch.of(batch.envelopes[:2]))
    first, second = receiver.requests
    assert [e["record"]["n"] for e in orjson.loads(first.body)] == [1, 3]
    assert first.id == f"hook:{EPOCH}:1-16:1-216"
    assert [e["record"]["action"] for e in orjson.loads(second.body)] == [DELIVERY_ALERT]
    assert denials._counts["filtered"] == 2
    assert alerts._counts["filtered"] == 3 + 2


def test_the_config_refuses_what_cannot_work_and_shows_no_secret() -> None:
    """Bad URLs, a signing secret that is not whsec_ base64, a reserved header, tls over http
    and a half-given auth are refused with their key; no secret's value is shown."""
    bad: dict[str, Any] = {
        "url": "ftp://x/hook?token=SECRET1",
        "signing_secret": "SECRET2",
        "headers": {"Content-Type": "text/plain", "X-Ok": "a\nb"},
        "tls": {"verify": False},
        "auth": {"strategy": "basic", "user": "u"},
        "match": {"record.effect": {"nested": [{"x": 1}]}},
    }
    with pytest.raises(ConfigError) as refused:
        hook_config(**bad)
    text = str(refused.value)
    for key in (
        "sinks.hook.url",
        "sinks.hook.signing_secret",
        "sinks.hook.headers.Content-Type",
        "sinks.hook.headers.X-Ok",
        "sinks.hook.auth.password",
        "sinks.hook.match.record.effect.nested",
    ):
        assert key in text
    assert "SECRET" not in text
    with pytest.raises(ConfigError, match=r"sinks\.hook\.tls: applies to https:// URLs only"):
        hook_config("http://127.0.0.1:1/hook", tls={"verify": False})
    with pytest.raises(ConfigError, match=r"sinks\.hook\.url: .*user:password"):
        hook_config("https://u:p@example.com/hook")
    short = "whsec_" + "QUJD"  # 3 bytes
    with pytest.raises(ConfigError, match="24 to 64 bytes"):
        hook_config("https://example.com/hook", signing_secret=short)
    config = hook_config("https://example.com:8443/h/SECRET3", batch_size=7, flush_interval="2s")
    assert config.where == "https://example.com:8443"
    assert (config.batching.max_events, config.batching.max_age) == (7, 2.0)
    assert "SECRET3" not in repr(config)


# --- under the driver -------------------------------------------------------------------------


async def test_batches_are_cut_by_batch_size_and_by_max_bytes(
    receiver: Receiver, tmp_path: Path
) -> None:
    """25 events with batch_size = 10 go out as 10, 10 and 5; with max_bytes = 2KiB each body
    stays within it, and every event arrives once, in order."""
    for name, keys in (("count", {"batch_size": 10}), ("bytes", {"max_bytes": "2KiB"})):
        wal = open_wal(tmp_path / name)
        for n in range(1, 26):  # a record each: a read of the WAL is never split by bytes
            await wal.append(entries(n, 1))
        await wal.close()
        start = len(receiver.requests)
        sink = hook(receiver.url, flush_interval=NEVER, **keys)
        await SinkDriver(sink, tmp_path).run(wal.readers[SINK], wal.epoch)
        sent = receiver.requests[start:]
        assert numbers([e for r in sent for e in r.envelopes()]) == list(range(1, 26))
        if name == "count":
            assert [len(r.envelopes()) for r in sent] == [10, 10, 5]
        else:
            assert len(sent) >= 4
            assert all(len(r.body) <= 2048 + 2 + len(r.envelopes()) for r in sent)


async def test_a_batch_goes_out_flush_interval_after_its_first_event(
    receiver: Receiver, tmp_path: Path, slow_autojump: trio.testing.MockClock
) -> None:
    """A batch short of batch_size is sent flush_interval after its first event was read, and
    the events appended meanwhile go with it."""
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    sink = hook(receiver.url, flush_interval="5s", timeout=NEVER)
    async with trio.open_nursery() as nursery:
        await nursery.start(SinkDriver(sink, tmp_path).run, reader, wal.epoch)
        await wal.append(entries(1, 2))
        appended = trio.current_time()
        await trio.sleep(2)
        await wal.append(entries(3, 2))
        await reader.acked_to(wal.committed)
        delivered = trio.current_time()
        await wal.close()
    (request,) = receiver.requests
    assert numbers(request.envelopes()) == [1, 2, 3, 4]
    assert 5.0 <= delivered - appended < 5.5


async def test_redacted_fields_leave_removed_or_hashed_and_the_signature_still_verifies(
    receiver: Receiver, tmp_path: Path
) -> None:
    """With a redact table, the hook receives the events without the removed field and with the
    hashed one as its keyed hash (equal values alike), signed over what was sent."""
    secret = new_secret()
    key = "r" * 32
    config = hook_config(
        receiver.url,
        signing_secret=secret,
        redact={"remove": ["record.pad"], "hash": ["record.user"], "key": key},
    )
    sink = config.build(SinkContext(SEED))
    sink.retry_policy = FAST
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 3, user="alice@example.com"))
    await wal.close()
    await SinkDriver(sink, tmp_path, redact=config.redact).run(wal.readers[SINK], wal.epoch)
    (request,) = receiver.requests
    assert Webhook(secret).verify(request.body, request.headers)
    records = [orjson.loads(e)["record"] for e in request.envelopes()]
    text = b'"alice@example.com"'
    expected = "hmac-sha256:" + hmac.new(key.encode(), text, hashlib.sha256).hexdigest()
    assert [(r["n"], r["user"], "pad" in r) for r in records] == [
        (1, expected, False),
        (2, expected, False),
        (3, expected, False),
    ]


async def test_a_503_then_200_sends_the_same_webhook_id_again(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A batch answered 503 is sent again with the same webhook-id and body, freshly signed,
    and the receiver holds its events once."""
    secret = new_secret()
    receiver.script = [(503, {}, "busy"), (503, {}, "busy")]
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 5))
    await wal.close()
    driver = SinkDriver(hook(receiver.url, signing_secret=secret), tmp_path)
    await driver.run(wal.readers[SINK], wal.epoch)
    tries = receiver.requests
    assert [r.status for r in tries] == [503, 503, 200]
    assert len({r.id for r in tries}) == 1
    assert len({r.body for r in tries}) == 1
    assert all(Webhook(secret).verify(r.body, r.headers) for r in tries)
    assert numbers(receiver.held()) == [1, 2, 3, 4, 5]
    assert driver.counters["retries"] == 2


async def test_retry_after_is_waited_for_before_the_next_try(
    receiver: Receiver, tmp_path: Path, slow_autojump: trio.testing.MockClock, logs: LogCapture
) -> None:
    """After a 429 with Retry-After: 30 the next try comes no sooner than 30 s later (the
    backoff alone would be under a second), and then delivers."""
    receiver.script = [(429, {"Retry-After": "30"}, "slow down")]
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    sink = hook(receiver.url, flush_interval="10ms", timeout=NEVER)
    async with trio.open_nursery() as nursery:
        await nursery.start(SinkDriver(sink, tmp_path).run, reader, wal.epoch)
        await wal.append(entries(1, 3))
        started = trio.current_time()
        await reader.acked_to(wal.committed)
        waited = trio.current_time() - started
        await wal.close()
    assert [r.status for r in receiver.requests] == [429, 200]
    (failed,) = logs.entries("sink_write_failed")
    assert failed["retry_in"] >= 30
    assert 30 <= waited < 31


async def test_a_400_goes_to_the_dead_letters_with_status_and_answer_and_the_hook_goes_on(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A batch the receiver answers 400 is dead-lettered with the status and the receiver's
    answer, raises a delivery alert, and the next batch is delivered."""
    receiver.poison = b"poison"
    emitted: list[Event] = []

    def emit(event: Event) -> bool:
        emitted.append(event)
        return True

    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    driver = SinkDriver(hook(receiver.url, flush_interval="10ms"), tmp_path, emit)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        for first, fields in ((1, {"tag": "poison"}), (4, {})):
            await wal.append(entries(first, 3, **fields))
            await reader.acked_to(wal.committed)
        await wal.close()
    (letters,) = (tmp_path / "dead_letter" / "hook").iterdir()
    lines = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
    assert [line["envelope"]["record"]["n"] for line in lines] == [1, 2, 3]
    assert {(line["status"], line["answer"]) for line in lines} == {(400, '{"error":"poisoned"}')}
    assert "HTTP 400" in lines[0]["reason"]
    assert numbers(receiver.held()) == [4, 5, 6]
    (alert,) = emitted
    assert orjson.loads(alert.record_json or b"")["sink"] == "hook"
    assert driver.counters["dead_letters"] == 3


async def test_a_refused_batch_is_replayed_signed_once_the_receiver_is_fixed(
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """``shipper dead-letter replay`` sends a batch the receiver refused with 400, once it
    takes it, signed under the batch's webhook-id, and moves the file to replayed/; a second
    replay sends nothing."""
    secret = new_secret()
    receiver.poison = b"poison"
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 3, tag="poison"))
    await wal.close()
    driver = SinkDriver(hook(receiver.url, signing_secret=secret), tmp_path / "var")
    await driver.run(wal.readers[SINK], wal.epoch)
    assert driver.counters["dead_letters"] == 3
    (refused,) = receiver.requests
    assert refused.status == 400
    receiver.poison = None  # the receiver is fixed
    config = tmp_path / "shipper.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            data_dir = "{tmp_path / "var"}"
            [sources.agents]
            type = "json_tls"
            address = "127.0.0.1:0"
            [sinks.hook]
            type = "webhook"
            url = "{receiver.url}"
            signing_secret = "{secret}"
            """
        )
    )
    assert (
        await trio.to_thread.run_sync(main, ["dead-letter", "replay", "hook", "-c", str(config)])
        == 0
    )
    assert "1 files (3 events) replayed, 0 refused" in capsys.readouterr().out
    refused_then_taken = receiver.requests[1:]
    assert [r.status for r in refused_then_taken] == [200]
    assert refused_then_taken[0].id == refused.id
    assert Webhook(secret).verify(refused_then_taken[0].body, refused_then_taken[0].headers)
    assert numbers(receiver.held()) == [1, 2, 3]
    letters = tmp_path / "var" / "dead_letter" / "hook"
    assert [p.name for p in letters.iterdir()] == ["replayed"]
    assert (
        await trio.to_thread.run_sync(main, ["dead-letter", "replay", "hook", "-c", str(config)])
        == 0
    )
    assert len(receiver.requests) == 2


async def test_nothing_is_lost_while_the_receiver_is_gone_for_a_while(tmp_path: Path) -> None:
    """While the receiver's port has no listener the hook retries and acknowledges nothing;
    events keep coming; once a receiver listens there again every event arrives once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    wal = open_wal(tmp_path / "wal")
    reader = Watched(wal.readers[SINK])
    start = wal.readers[SINK].acked
    driver = SinkDriver(hook(url, flush_interval="10ms", batch_size=7), tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, reader, wal.epoch)
        await wal.append(entries(1, 10))
        await wait_until(lambda: driver.counters["retries"] >= 3)
        await wal.append(entries(11, 10))
        await wait_until(lambda: driver.counters["retries"] >= 6)
        assert wal.readers[SINK].acked == start
        assert driver.health().status in ("degraded", "failing")
        with receiving(port=port) as receiver:
            await reader.acked_to(wal.committed)
            await wal.close()
    assert numbers(receiver.held()) == list(range(1, 21))
    assert len(receiver.taken()) == len(receiver.requests)  # nothing sent twice
    assert driver.health().status == "ok"


async def test_a_resent_batch_after_a_restart_keeps_its_webhook_id(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A batch the receiver took but the WAL never acknowledged (the daemon stopped first)
    is sent again by the next start with the same webhook-id, so the receiver can drop it."""
    wal = open_wal(tmp_path / "wal")
    await wal.append(entries(1, 5))
    await wal.close()
    first = hook(receiver.url)
    await first.open(wal.epoch)
    read = await wal.readers[SINK].read(1 << 20)
    assert read is not None
    await first.deliver(Batch.of(list(read.envelopes)))
    await first.close()
    wal = await reopen(wal)
    await wal.close()
    await SinkDriver(hook(receiver.url), tmp_path).run(wal.readers[SINK], wal.epoch)
    once, again = receiver.requests
    assert once.id == again.id
    assert once.body == again.body
    assert numbers(receiver.held()) == [1, 2, 3, 4, 5]


async def test_the_readmes_receiver_snippet_verifies_and_drops_a_resent_batch(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver code the README shows accepts a real request of the sink, confirms a
    batch sent again without handling it twice, and refuses an altered body."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("  ```python\n  import os\n") + len("  ```python\n")
    snippet = textwrap.dedent(readme[start : readme.index("  ```\n", start)])
    secret = new_secret()
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    taken: set[str] = set()
    handled: list[object] = []
    namespace: dict[str, Any] = {"already_taken": taken.__contains__, "handle": handled.append}
    exec(compile(snippet, "README.md", "exec"), namespace)
    receive: Callable[[bytes, dict[str, str]], int] = namespace["receive"]
    await deliver_once(hook(receiver.url, signing_secret=secret), Batch.of([envelope(16, n=1)]))
    (request,) = receiver.requests
    assert receive(request.body, request.headers) == 204
    taken.add(request.id)
    assert receive(request.body, request.headers) == 204
    assert receive(request.body.replace(b'"n":1', b'"n":2'), request.headers) == 401
    assert len(handled) == 1


def test_the_example_config_reads_as_it_says() -> None:
    """config/examples/webhooks.toml is valid with its variables set, and its hooks take what
    its comments say: gzip denials, and alerts with a bearer token and a header."""
    raw = tomllib.loads((REPO / "config" / "examples" / "webhooks.toml").read_text())
    sinks = parse_config(raw, EXAMPLE_ENV).sinks
    denials, tickets = sinks["denials"], sinks["tickets"]
    assert isinstance(denials, WebhookSinkConfig)
    assert isinstance(tickets, WebhookSinkConfig)
    assert denials.compression == "gzip"
    assert [(m.path, m.values) for m in denials.match] == [(("record", "effect"), ("deny",))]
    assert tickets.auth is not None
    assert tickets.auth.header() == "Bearer a-bearer-token"
    assert [name for name, _ in tickets.headers] == ["X-Tenant"]
    assert tickets.match[0].values[0] == "shipper.chain_alert"
