"""What the listening sources share in their config, read in one place: TLS, connection limits
and admission (``shipper.sources._net``), and the identity table (``shipper.sources._identity``).

``ListenerConfig`` holds those keys and their defaults (the only place they are written; the
listener takes them from here); a source type's config subclasses it and reads the shared keys
with the functions below, in the order it reads its own, so that its problems come in the order
of its keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shipper.config import SourceConfig, Table, TlsServerConfig
from shipper.sources._identity import IdentityTable

#: Defaults of the keys of the stream listeners (``json_tls``; ``syslog`` over tcp, tls and unix
#: stream sockets): connection admission, see ``shipper.sources._net``.
MAX_CONNECTIONS: Final = 1024
MAX_CONNECTIONS_PER_PEER: Final = 64
IDLE_TIMEOUT: Final = 300.0
HANDSHAKE_TIMEOUT: Final = 10.0
FRAME_TIMEOUT: Final = 30.0
#: The largest line a source may accept: its envelope must fit one WAL record (64 MiB).
MAX_LINE_BYTES: Final = 32 * 1024 * 1024
#: Keys that only a stream listener takes.
STREAM_ONLY_KEYS: Final = ("max_connections_per_peer", "handshake_timeout", "frame_timeout")


@dataclass(frozen=True, kw_only=True)
class ListenerConfig(SourceConfig):
    """The keys every listening source takes: ``tls``, connection limits and admission (which
    apply to stream listeners), and ``identity``."""

    tls: TlsServerConfig | None = None
    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT
    identity: IdentityTable | None = None
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    frame_timeout: float = FRAME_TIMEOUT


def read_tls(table: Table) -> tuple[Table | None, TlsServerConfig | None]:
    """The ``tls`` table (to check what else it holds) and what it configures (None: absent, or
    a problem)."""
    tls_table = table.table("tls")
    return tls_table, tls_table.tls_server() if tls_table is not None else None


def read_limits(table: Table) -> dict[str, Any]:
    """``max_connections`` and ``idle_timeout``."""
    return {
        "max_connections": table.integer(
            "max_connections", MAX_CONNECTIONS, minimum=1, maximum=1_000_000
        ),
        "idle_timeout": table.duration("idle_timeout", IDLE_TIMEOUT, minimum=0.001),
    }


def read_admission(table: Table, max_connections: int, no_tls: str | None) -> dict[str, Any]:
    """The admission keys of a stream listener (``shipper.sources._net``).

    ``max_connections_per_peer`` defaults to 64, or to ``max_connections`` when that is lower; a
    value above ``max_connections`` is refused (it could never be reached). ``no_tls`` is None
    with TLS, else why ``handshake_timeout`` means nothing here.
    """
    per_peer = table.integer(
        "max_connections_per_peer",
        min(MAX_CONNECTIONS_PER_PEER, max_connections),
        minimum=1,
        maximum=1_000_000,
    )
    if table.has("max_connections_per_peer") and per_peer > max_connections:
        table.problem(
            "max_connections_per_peer",
            f"expected at most max_connections ({max_connections}), got {per_peer}",
        )
    if no_tls is not None:
        table.refuse(("handshake_timeout",), no_tls)
    return {
        "max_connections_per_peer": per_peer,
        "handshake_timeout": table.duration("handshake_timeout", HANDSHAKE_TIMEOUT, minimum=0.001),
        "frame_timeout": table.duration("frame_timeout", FRAME_TIMEOUT, minimum=0.001),
    }


def refuse_stream_keys(table: Table, got: str) -> None:
    """Refuse the admission keys in a source that is no stream listener (``got``: its mode)."""
    table.refuse(
        STREAM_ONLY_KEYS,
        f'expected only with a stream mode ("tcp", "tls", or "unix" with socket_type = '
        f'"stream"), got {got}',
    )


def read_identity(table: Table, tls_table: Table | None, needs: str = "") -> IdentityTable | None:
    """``[sources.X.identity]``: each key a certificate identity, each value a list of patterns;
    it needs client certificates (``tls.client_ca``; ``needs`` names what else it needs)."""
    identity_table = table.table("identity")
    if identity_table is None:
        return None
    entries: dict[str, tuple[str, ...]] = {}
    names = identity_table.keys()
    if not names:
        identity_table.problem("", "expected at least one certificate identity, got an empty table")
    for name in names:
        patterns = identity_table.string_list(name)  # None: a problem, reported
        if patterns is None:
            continue
        if "" in patterns:
            identity_table.problem(name, 'expected patterns that are not empty, got ""')
        entries[name] = patterns
    identity_table.finish()
    if tls_table is None or not tls_table.has("client_ca"):
        table.problem(
            "identity",
            f"requires {needs}tls.client_ca (without client certificates there is no identity "
            "to check)",
        )
    return entries
