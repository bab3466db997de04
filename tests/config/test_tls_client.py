"""Tests of the client TLS config (``TlsClientConfig``) against a real TLS server on 127.0.0.1,
and of how a ``tls`` table of a sink is read."""

from __future__ import annotations

import copy
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import certifi
import pytest
import trio

from shipper.config import SINK_TYPES, TlsClientConfig, TlsServerConfig, parse_config
from shipper.errors import ConfigError
from shipper.sources._net import peer_identity
from tests.conftest import TlsFiles
from tests.probe_sink import ProbeSinkConfig


@asynccontextmanager
async def tls_server(server: TlsServerConfig) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 (its port is yielded) that answers each client with the subject
    of the client certificate it verified (``-`` for none), then closes."""
    context = server.build()

    async def answer(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, context, server_side=True)
        try:
            await stream.do_handshake()
            subject, _ = peer_identity(stream.getpeercert())
            await stream.send_all((subject or "-").encode())
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def ask(client: TlsClientConfig, port: int) -> str:
    """Connect to 127.0.0.1:``port`` with ``client``'s context and name, and read the answer."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(
        tcp, client.build(), server_hostname=client.server_hostname("127.0.0.1")
    )
    async with stream:
        await stream.do_handshake()
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
        return answer.decode()


#: OpenSSL's verify codes for a chain that ends at a CA the client does not trust.
UNTRUSTED_CA = {
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN (the server sent its CA too)
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
}
#: OpenSSL's verify code for a certificate that does not carry the name checked.
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


def verify_code(info: pytest.ExceptionInfo[trio.BrokenResourceError]) -> int:
    """OpenSSL's code for the certificate verification failure under a broken TLS stream."""
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError), cause
    return cause.verify_code


def server(tls_files: TlsFiles, require_client_cert: bool = False) -> TlsServerConfig:
    """The test server certificate; client certificates of the test CA, required or not."""
    return TlsServerConfig(
        tls_files.server_pem, tls_files.server_key, tls_files.ca_pem, require_client_cert
    )


async def test_the_ca_file_makes_the_server_trusted(tls_files: TlsFiles) -> None:
    """With ``ca`` the server's certificate is verified against that CA, and the name checked is
    the host connected to."""
    async with tls_server(server(tls_files)) as port:
        assert await ask(TlsClientConfig(ca=tls_files.ca_pem), port) == "-"


async def test_without_a_ca_file_certifis_bundle_applies(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``ca``, the client trusts certifi's bundle and only it: a server whose CA is not
    in it is refused, and one whose CA is (here made so) is taken."""
    async with tls_server(server(tls_files)) as port:
        with pytest.raises(trio.BrokenResourceError) as info:
            await ask(TlsClientConfig(), port)
        assert verify_code(info) in UNTRUSTED_CA
        monkeypatch.setattr(certifi, "where", lambda: str(tls_files.ca_pem))
        assert await ask(TlsClientConfig(), port) == "-"


async def test_a_client_certificate_is_presented(tls_files: TlsFiles) -> None:
    """With ``cert`` and ``key`` the client passes a server that requires client certificates,
    which sees the certificate's subject; without them that server refuses it."""
    async with tls_server(server(tls_files, require_client_cert=True)) as port:
        client = TlsClientConfig(
            ca=tls_files.ca_pem, cert=tls_files.client_pem, key=tls_files.client_key
        )
        assert "CN=agent-host-7" in (await ask(client, port)).split(",")
        with pytest.raises(trio.BrokenResourceError) as info:
            await ask(TlsClientConfig(ca=tls_files.ca_pem), port)
    assert isinstance(info.value.__cause__, ssl.SSLError)


async def test_server_name_is_the_name_checked(tls_files: TlsFiles) -> None:
    """``server_name`` replaces the host as the name the certificate must carry: one it carries
    passes, another is refused."""
    async with tls_server(server(tls_files)) as port:
        assert await ask(TlsClientConfig(ca=tls_files.ca_pem, server_name="localhost"), port) == "-"
        with pytest.raises(trio.BrokenResourceError) as info:
            await ask(TlsClientConfig(ca=tls_files.ca_pem, server_name="siem.example"), port)
    assert verify_code(info) == HOSTNAME_MISMATCH


async def test_verify_false_accepts_an_untrusted_server(tls_files: TlsFiles) -> None:
    """``verify = false`` checks neither the certificate nor the name."""
    async with tls_server(server(tls_files)) as port:
        client = TlsClientConfig(verify=False, server_name="siem.example")
        assert await ask(client, port) == "-"


# --- reading [sinks.X.tls] -----------------------------------------------------------------------


def raw_with_tls(**tls: Any) -> dict[str, Any]:
    """A config whose probe sink has a ``tls`` table of ``tls`` (paths as strings)."""
    return {
        "sources": {"a": {"type": "json_tls", "address": "127.0.0.1:6515"}},
        "sinks": {
            "out": {
                "type": "probe",
                "tls": {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()},
            }
        },
    }


def read_tls(raw: dict[str, Any]) -> TlsClientConfig | None:
    """The probe sink's client TLS as parsed."""
    with SINK_TYPES.registered(ProbeSinkConfig):
        sink = parse_config(raw, env={}).sinks["out"]
    assert isinstance(sink, ProbeSinkConfig)
    return sink.tls


def tls_problems(raw: dict[str, Any]) -> list[str]:
    """The problems parsing ``raw`` reports."""
    with SINK_TYPES.registered(ProbeSinkConfig), pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    return [str(problem) for problem in info.value.problems]


def test_a_tls_table_is_read_into_a_client_config(tls_files: TlsFiles) -> None:
    """Every key of a client ``tls`` table comes out in ``TlsClientConfig``; an empty table is
    the defaults (system trust, verified)."""
    raw = raw_with_tls(
        ca=tls_files.ca_pem,
        cert=tls_files.client_pem,
        key=tls_files.client_key,
        server_name="siem.example",
    )
    assert read_tls(raw) == TlsClientConfig(
        tls_files.ca_pem, tls_files.client_pem, tls_files.client_key, "siem.example", True
    )
    assert read_tls(raw_with_tls()) == TlsClientConfig()
    assert read_tls(raw_with_tls(verify=False)) == TlsClientConfig(verify=False)


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        pytest.param(
            {"cert": "client.pem"},
            [
                "sinks.out.tls.key: required key is missing (with cert: a client certificate "
                "needs both cert and key)"
            ],
            id="cert-without-key",
        ),
        pytest.param(
            {"key": "client.key"},
            [
                "sinks.out.tls.cert: required key is missing (with key: a client certificate "
                "needs both cert and key)"
            ],
            id="key-without-cert",
        ),
        pytest.param(
            {"ca": "ca.pem", "verify": False},
            [
                "sinks.out.tls.ca: expected only with verify = true (an unverified server is "
                "checked against no CA)"
            ],
            id="ca-unverified",
        ),
        pytest.param(
            {"server_name": "siem example"},
            ['sinks.out.tls.server_name: expected a host name (or IP address), got "siem example"'],
            id="bad-server-name",
        ),
        pytest.param(
            {"verify": "no"},
            ['sinks.out.tls.verify: expected true or false, got "no"'],
            id="verify-as-string",
        ),
        pytest.param(
            {"server_nmae": "siem.example"},
            ['sinks.out.tls.server_nmae: unknown key (did you mean "server_name"?)'],
            id="unknown-key",
        ),
    ],
)
def test_a_bad_tls_table_is_reported_at_its_keys(
    tls_files: TlsFiles, tls: dict[str, Any], expected: list[str]
) -> None:
    """Each mistake in a client ``tls`` table is reported at its key path."""
    files = {
        "client.pem": tls_files.client_pem,
        "client.key": tls_files.client_key,
        "ca.pem": tls_files.ca_pem,
    }
    raw = raw_with_tls(**{k: files.get(v, v) if isinstance(v, str) else v for k, v in tls.items()})
    assert tls_problems(raw) == expected


def test_unusable_tls_files_are_reported_at_the_table(tls_files: TlsFiles, tmp_path: Path) -> None:
    """A missing file is reported at its key; files that do not load (a key of another
    certificate) at the table."""
    missing = tmp_path / "missing.pem"
    assert tls_problems(raw_with_tls(ca=missing)) == [
        f'sinks.out.tls.ca: file not found, got "{missing}"'
    ]
    raw = raw_with_tls(cert=tls_files.client_pem, key=tls_files.server_key)
    [problem] = tls_problems(copy.deepcopy(raw))
    assert problem.startswith("sinks.out.tls: cannot use these certificate files: ")
