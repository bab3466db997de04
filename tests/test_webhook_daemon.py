"""End to end: ``shipper run`` (a daemon process) delivers what a sender sent to a real HTTPS
webhook receiver, signed so that the reference verifier accepts every request."""

from __future__ import annotations

from pathlib import Path

import orjson
from standardwebhooks import Webhook

from tests.conftest import TlsFiles, archive_lines, free_port, running_daemon, runtime
from tests.test_cli import daemon_config, send, write_config
from tests.webhooks import new_secret, receiving, server_context


def test_the_daemon_delivers_sent_records_to_an_https_receiver_signed(
    tmp_path: Path, tls_files: TlsFiles, processes: bool
) -> None:
    """Records sent to a running daemon reach an HTTPS receiver verified with the configured
    CA, only the denials the hook's match names, each once, in order, in requests signed with
    the secret from the environment; the file archive beside it still holds every record."""
    secret = new_secret()
    port = free_port()
    raw = daemon_config(tmp_path, port)
    raw["runtime"] = runtime(processes)
    with receiving(server_context(tls_files.server_pem, tls_files.server_key)) as receiver:
        raw["sinks"]["denials"] = {
            "type": "webhook",
            "url": receiver.url,
            "signing_secret": "${HOOK_SECRET}",
            "batch_size": 7,
            "flush_interval": "50ms",
            "compression": "gzip",
            "match": {"record": {"effect": "deny"}},  # record.effect = "deny"
            "tls": {"ca": str(tls_files.ca_pem)},
        }
        config = write_config(tmp_path / "shipper.toml", raw)
        with running_daemon(config, tmp_path, {"HOOK_SECRET": secret}) as daemon:
            lines = [
                orjson.dumps(
                    {"agentId": "e2e", "n": n, "effect": "deny" if n % 3 == 0 else "allow"}
                )
                + b"\n"
                for n in range(1, 61)
            ]
            send(port, b"".join(lines))  # one connection: its order is the archive's
            daemon.wait_for(lambda: len(receiver.held()) >= 20, "the denials delivered", 60)
            assert daemon.stop() == 0
    held = [orjson.loads(envelope) for envelope in receiver.held()]
    assert [e["record"]["n"] for e in held] == list(range(3, 61, 3))
    requests = receiver.taken()
    assert all(len(r.envelopes()) <= 7 for r in requests)
    assert all(Webhook(secret).verify(r.body, r.headers) for r in requests)
    assert all(r.headers["content-encoding"] == "gzip" for r in requests)
    archived = [orjson.loads(line)["record"]["n"] for line in archive_lines(tmp_path / "archive")]
    assert archived == list(range(1, 61))
