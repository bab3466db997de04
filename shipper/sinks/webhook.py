"""Sink ``webhook``: batches of envelopes POSTed as JSON arrays to an HTTP receiver, signed as
Standard Webhooks prescribes, so that a receiver can check where they come from and that they
are fresh.

A request::

    POST <url>
    Content-Type: application/json
    Content-Encoding: gzip                   (with compression = "gzip": the body is gzipped)
    User-Agent: shipper/<version>
    webhook-id: <sink id>:<epoch>:<first id>:<last id>
    webhook-timestamp: 1795000000            (Unix seconds when this try was signed)
    webhook-signature: v1,<base64>           (with signing_secret)
    Authorization: Bearer ... | Basic ...    (with auth)
    <the configured headers>

    [{"v":1,"id":"3-16",...},{"v":1,"id":"3-538",...}]

The body is a JSON array of envelopes (``shipper.events``), each exactly as the WAL holds it,
joined with commas: never parsed and written again.

Rules:

* **Batches.** ``batch_size`` events at most, ``max_bytes`` of envelopes at most (or one
  envelope larger than that: the driver cuts reads where either limit falls), sent at the latest
  ``flush_interval`` after its first event was read (the driver's ``BatchSettings``).
* **Filter.** ``match`` (field path → allowed values; it sees the event after ``redact``, so it
  should not name a field that is removed or hashed) keeps the events whose every listed field
  holds one of its values; the rest are not for this hook: never sent, acknowledged with the
  batch, counted as ``filtered``. A batch left empty is acknowledged without a request.
* **Signature** (with ``signing_secret``, ``whsec_`` + base64 of 24 to 64 bytes): ``v1,`` + the
  base64 HMAC-SHA256 of ``<webhook-id>.<webhook-timestamp>.<body>`` (the body before
  compression) keyed with the secret's base64-decoded bytes. Each try is signed anew, with the
  time of that try, so a retry is never refused as a replay.
* **Idempotency.** ``webhook-id`` names the sink, the WAL's epoch and the ids (WAL positions) of
  the first and last envelope sent: a retry of the same events carries the same id, after a
  restart too. A receiver that drops a ``webhook-id`` it has seen takes each batch once.
* **Outcomes.** A 2xx answer confirms the batch (then the driver acknowledges it). No
  connection, a TLS failure, a timeout (``timeout``, for each of connecting, sending, waiting
  for the answer), 408, 429 and 5xx are ``DestinationUnavailable``: the driver tries the same
  batch again with capped exponential backoff and jitter, or after ``Retry-After`` (seconds or
  an HTTP date) when that is longer, within ``RetryPolicy.max_retry_after``. Any other status
  (3xx: redirects are not followed; 4xx) is ``DestinationRejected``: the batch goes to the
  dead-letter area with the status and the first ``MAX_ANSWER_BYTES`` of the answer (the
  reason, which the log and the delivery alert carry, quotes its first line's start).
* **Delivery is at least once.** A receiver cannot be asked what it holds (``resume_point`` is
  None): a batch whose 2xx was lost (a timeout after the receiver took it) or that was confirmed
  just before a crash, before the WAL cursor moved, is sent again. After a restart the
  driver may cut batches differently, and then the events come again under another
  ``webhook-id``; the envelope ids with the epoch from ``webhook-id`` name each event
  uniquely, for receivers that must hold each once.
* **TLS.** ``https://`` URLs are verified: against ``tls.ca`` when set, else certifi's
  bundle (``TlsClientConfig``). ``http://`` is
  accepted for a receiver on the same host or behind its own TLS proxy: the events, the
  credentials and the signature then travel in clear (the signature still proves origin and
  freshness, not secrecy), and a warning is logged at each start when the host is not a
  loopback address. Proxy variables of the environment and ``.netrc`` are not used.
* **What is shown.** A hook URL often holds a token in its path or query, so logs and errors
  name only its scheme, host and port; header values, credentials and the secret are
  ``Secret`` values, never shown.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import ipaddress
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, ClassVar, Final, Literal
from urllib.parse import SplitResult, urlsplit

import httpx2
import orjson
import trio
from isal import igzip

from shipper import __version__
from shipper.config import SINK_TYPES, SinkCommon, SinkConfig, Table, TlsClientConfig
from shipper.config.values import Secret, literal_values
from shipper.errors import DestinationRejected, DestinationUnavailable
from shipper.logging import get_logger
from shipper.metrics import CounterSet, Registry
from shipper.retry import RetryPolicy
from shipper.sinks.base import Batch, BatchSettings, SinkBase, SinkContext, position_of

log = get_logger("shipper.sinks.webhook")

Compression = Literal["none", "gzip"]
AuthStrategy = Literal["bearer", "basic"]

#: How much of a receiver's answer is read and kept (in a dead letter, or an error).
MAX_ANSWER_BYTES: Final = 4096
#: How much of the answer the reason (logged, and in the delivery alert) quotes, on one line.
REASON_ANSWER_CHARS: Final = 200
#: Statuses that mean "not now": retried.
RETRY_STATUSES: Final = frozenset({408, 429})
#: Headers the sink writes itself: not to be set in ``headers``.
RESERVED_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
DEFAULT_BATCHING: Final = BatchSettings(max_events=100, max_bytes=1024 * 1024, max_age=1.0)
#: Receivers are slower to come back than disks: start at half a second, up to a minute.
WEBHOOK_RETRY: Final = RetryPolicy(first=0.5, limit=60.0)
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SECRET_PREFIX: Final = "whsec_"


# --- config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """``[sinks.ID.auth]``: ``strategy = "bearer"`` with ``token``, or ``"basic"`` with ``user``
    and ``password``."""

    strategy: AuthStrategy
    token: Secret | None = None
    user: str = ""
    password: Secret | None = None

    def header(self) -> str:
        """The ``Authorization`` header's value (holds the secret: never log it)."""
        if self.strategy == "bearer":
            assert self.token is not None
            return f"Bearer {self.token.reveal()}"
        assert self.password is not None
        pair = f"{self.user}:{self.password.reveal()}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"


@dataclass(frozen=True)
class Match:
    """One condition of ``match``: the field at ``path`` (keys from the envelope down) holds one
    of ``values``."""

    path: tuple[str, ...]
    values: tuple[str | int | float | bool, ...]

    def holds(self, envelope: Mapping[str, Any]) -> bool:
        value: Any = envelope
        for key in self.path:
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        return any(
            value == allowed and isinstance(value, bool) == isinstance(allowed, bool)
            for allowed in self.values
        )


@SINK_TYPES.register
@dataclass(frozen=True, kw_only=True)
class WebhookSinkConfig(SinkConfig):
    """``type = "webhook"``: signed JSON arrays of envelopes POSTed to ``url`` (see the module
    docstring and the README)."""

    kind: ClassVar[str] = "webhook"
    forwards: ClassVar[bool] = True
    url: Secret
    batching: BatchSettings = DEFAULT_BATCHING
    compression: Compression = "none"
    headers: tuple[tuple[str, Secret], ...] = ()
    auth: Auth | None = None
    signing_secret: Secret | None = None
    timeout: float = 10.0
    tls: TlsClientConfig = field(default_factory=TlsClientConfig)
    match: tuple[Match, ...] = ()

    @classmethod
    def read(cls, table: Table, common: SinkCommon) -> WebhookSinkConfig | None:
        before = table.problem_count
        url = table.secret("url", check=_check_url)
        batch_size = table.integer("batch_size", DEFAULT_BATCHING.max_events, 1, 100_000)
        max_bytes = table.size(
            "max_bytes", DEFAULT_BATCHING.max_bytes, minimum=1024, maximum=64 * 1024 * 1024
        )
        flush_interval = table.duration("flush_interval", DEFAULT_BATCHING.max_age)
        compression = table.choice("compression", literal_values(Compression), "none")
        timeout = table.duration("timeout", cls.timeout, minimum=0.001)
        signing_secret = table.secret("signing_secret", None, check=_check_signing_secret)
        auth = _read_auth(table)
        headers = _read_headers(table, auth is not None)
        https = url is not None and url.reveal().lower().startswith("https://")
        tls = TlsClientConfig()
        tls_table = table.table("tls")
        if tls_table is not None:
            if url is not None and not https:
                tls_table.skip()
                table.problem("tls", "applies to https:// URLs only")
            else:
                tls = tls_table.tls_client() or tls
        match = _read_match(table)
        if table.problem_count > before or url is None:
            return None
        return cls(
            **common,
            url=url,
            batching=BatchSettings(batch_size, max_bytes, flush_interval),
            compression=compression,
            headers=headers,
            auth=auth,
            signing_secret=signing_secret,
            timeout=timeout,
            tls=tls,
            match=match,
        )

    @property
    def where(self) -> str:
        """The URL's scheme, host and port: what logs and errors show of it."""
        return _where(urlsplit(self.url.reveal()))

    def build(self, context: SinkContext) -> WebhookSink:
        return WebhookSink(self)

    def own_counters(self) -> Mapping[str, str]:
        return WebhookSink.own_counters


def _check_url(value: str) -> None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError("expected an http:// or https:// URL") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("expected a URL without user:password@ (give them in auth)")
    if parts.fragment:
        raise ValueError("expected a URL without a #fragment")


def _check_signing_secret(value: str) -> None:
    if not value.startswith(_SECRET_PREFIX):
        raise ValueError(f'expected "{_SECRET_PREFIX}" followed by base64')
    if not 24 <= len(signing_key(value)) <= 64:
        raise ValueError(f'expected "{_SECRET_PREFIX}" followed by base64 of 24 to 64 bytes')


def signing_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: the base64 after the prefix, decoded (padding may be
    left out). Raises ValueError if it is not base64."""
    text = secret.removeprefix(_SECRET_PREFIX)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f'expected "{_SECRET_PREFIX}" followed by base64') from exc


def _read_auth(table: Table) -> Auth | None:
    auth = table.table("auth")
    if auth is None:
        return None
    before = auth.problem_count
    strategy = auth.choice("strategy", literal_values(AuthStrategy))
    if strategy == "bearer":
        token = auth.secret("token")
        auth.refuse(["user", "password"], 'only strategy = "basic" takes a user and password')
        auth.finish()
        return Auth(strategy, token=token) if auth.problem_count == before else None
    user = auth.string("user")
    if ":" in user:
        auth.problem("user", "expected a user name without ':'")
    password = auth.secret("password")
    auth.refuse(["token"], 'only strategy = "bearer" takes a token')
    auth.finish()
    return Auth(strategy, user=user, password=password) if auth.problem_count == before else None


def _check_header_value(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("expected a header value without line breaks or NUL")


def _read_headers(table: Table, has_auth: bool) -> tuple[tuple[str, Secret], ...]:
    headers_table = table.table("headers")
    if headers_table is None:
        return ()
    headers: list[tuple[str, Secret]] = []
    names = headers_table.keys()
    for name in names:
        lower = name.lower()
        if not _TOKEN_RE.fullmatch(name):
            headers_table.refuse([name], "expected a header name (letters, digits, '-', ...)")
        elif lower in RESERVED_HEADERS:
            headers_table.refuse([name], "this header is the sink's own: it cannot be set here")
        elif lower == "authorization" and has_auth:
            headers_table.refuse([name], "give either auth or an Authorization header")
        else:
            value = headers_table.secret(name, check=_check_header_value)
            if value is not None:
                headers.append((name, value))
    headers_table.finish()
    return tuple(headers)


_MATCH_EXPECTED: Final = "expected a string, a number, true or false, or a list of them"


def _read_match(table: Table) -> tuple[Match, ...]:
    """``[sinks.ID.match]``: field paths (``"record.effect"``, or TOML's dotted keys, which make
    nested tables) to a value or a list of values."""
    match_table = table.table("match")
    if match_table is None:
        return ()
    conditions: list[Match] = []
    _read_conditions(match_table, (), conditions)
    if not conditions and match_table.problem_count == table.problem_count:
        table.problem("match", "expected at least one field path = value(s)")
    return tuple(conditions)


def _read_conditions(table: Table, prefix: tuple[str, ...], out: list[Match]) -> None:
    names = table.keys()
    for name in names:
        path = (*prefix, *name.split("."))
        value = table.convert(name, None, _as_is, None)
        if not all(path):
            table.problem(name, "expected a field path of dot-separated names")
        elif isinstance(value, dict):
            sub = table.table(name)
            if sub is not None:
                _read_conditions(sub, path, out)
        elif value is not None:
            given = value if isinstance(value, list) else [value]
            values = [item for item in given if isinstance(item, str | int | float)]
            if values and len(values) == len(given):
                out.append(Match(path, tuple(values)))
            else:
                table.problem(name, _MATCH_EXPECTED)
    table.finish()


def _as_is(value: object) -> object:
    return value


def _where(parts: SplitResult) -> str:
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    host = parts.hostname or ""
    return f"{parts.scheme.lower()}://{f'[{host}]' if ':' in host else host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds, or an HTTP date; ``now``
    in Unix seconds); None for no header or one that is neither."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) < 16 else float("inf")
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def signature(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` of a body: ``v1,`` + base64 HMAC-SHA256 of
    ``<id>.<timestamp>.<body>``."""
    signed = hmac.new(key, f"{message_id}.{timestamp}.".encode(), hashlib.sha256)
    signed.update(body)
    return "v1," + base64.b64encode(signed.digest()).decode("ascii")


# --- the sink ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What a batch becomes before it is sent: how many events the filter kept, the id, the
    body (as signed) and what goes on the wire (compressed or not)."""

    kept: int
    message_id: str
    body: bytes
    content: bytes


class WebhookSink(SinkBase):
    """POSTs batches to a webhook receiver (see the module docstring)."""

    kind = "webhook"
    retry_policy = WEBHOOK_RETRY
    own_counters: Mapping[str, str] = {
        "filtered": "Events the webhook's match left out (acknowledged: not for this hook)"
    }

    def __init__(self, config: WebhookSinkConfig) -> None:
        super().__init__(config.id)
        self.config = config
        self.batching = config.batching
        self._url = config.url.reveal()
        parts = urlsplit(self._url)
        self._https = parts.scheme.lower() == "https"
        self._plain_remote = not self._https and not _is_loopback(parts.hostname or "")
        self._where = _where(parts)
        self._key = signing_key(config.signing_secret.reveal()) if config.signing_secret else None
        self._extensions: dict[str, Any] = {}
        if self._https and config.tls.server_name is not None:
            self._extensions["sni_hostname"] = config.tls.server_name
        self._client: httpx2.AsyncClient | None = None
        self._epoch = "0"
        self._counts = CounterSet(Registry(), "sink", config.id, dict(self.own_counters))

    def count_into(self, counters: CounterSet) -> None:
        self._counts = counters

    # --- the contract -----------------------------------------------------------------------

    async def open(self, epoch: str) -> None:
        self._epoch = epoch
        await self.close()  # (a client left from an open without close is not kept)
        verify: Any = False
        if self._https:
            try:
                verify = await trio.to_thread.run_sync(self.config.tls.build)
            except (ssl.SSLError, OSError) as exc:  # changed since the config was read
                raise DestinationUnavailable(
                    f"webhook {self._where}: cannot use the TLS files: {exc}"
                ) from exc
        if self._plain_remote:
            log.warning(
                "sink_webhook_plaintext",
                sink=self.id,
                where=self._where,
                note="events, credentials and signatures go in clear",
            )
        self._client = httpx2.AsyncClient(
            verify=verify,
            timeout=httpx2.Timeout(self.config.timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": f"shipper/{__version__}"},
        )

    async def deliver(self, batch: Batch) -> None:
        """POST the events ``match`` keeps; return once the receiver answered 2xx."""
        prepared = await trio.to_thread.run_sync(self._prepare, batch.envelopes)
        if prepared is not None:
            await self._post(prepared)
        kept = prepared.kept if prepared is not None else 0
        self._counts["filtered"] += len(batch.envelopes) - kept

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- sending ----------------------------------------------------------------------------

    def _prepare(self, envelopes: list[bytes]) -> _Prepared | None:
        """The request of a batch (in a worker thread: parsing for the filter, gzip); None if
        the filter keeps nothing."""
        conditions = self.config.match
        if conditions:
            envelopes = [e for e in envelopes if _wanted(orjson.loads(e), conditions)]
            if not envelopes:
                return None
        message_id = (
            f"{self.id}:{self._epoch}:{position_of(envelopes[0])}:{position_of(envelopes[-1])}"
        )
        body = b"[" + b",".join(envelopes) + b"]"
        gzipped = self.config.compression == "gzip"
        # ISA-L's level 1 (standard gzip, as the s3 sink writes it): a seventh of zlib's level 6
        # in CPU for a body about a tenth larger.
        content = igzip.compress(body, compresslevel=1, mtime=0) if gzipped else body
        return _Prepared(len(envelopes), message_id, body, content)

    def _headers(self, prepared: _Prepared) -> dict[str, str]:
        headers = {name: value.reveal() for name, value in self.config.headers}
        if self.config.auth is not None:
            headers["Authorization"] = self.config.auth.header()
        headers["Content-Type"] = "application/json"
        if self.config.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        timestamp = str(int(time.time()))
        headers["webhook-id"] = prepared.message_id
        headers["webhook-timestamp"] = timestamp
        if self._key is not None:
            headers["webhook-signature"] = signature(
                self._key, prepared.message_id, timestamp, prepared.body
            )
        return headers

    async def _post(self, prepared: _Prepared) -> None:
        """Send one try; raise what the answer means for the driver."""
        if self._client is None:
            raise RuntimeError("deliver before open")
        where = self._where
        try:
            async with self._client.stream(
                "POST",
                self._url,
                content=prepared.content,
                headers=self._headers(prepared),
                extensions=self._extensions,
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return
                answer = await _read_answer(response)
                hint = response.headers.get("Retry-After")
                phrase = response.reason_phrase
        except httpx2.TimeoutException as exc:
            raise DestinationUnavailable(
                f"webhook {where}: no answer within {self.config.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx2.TransportError as exc:
            raise DestinationUnavailable(f"webhook {where}: {_describe(exc)}") from exc
        reason = f"webhook {where}: HTTP {status} {phrase}".rstrip()
        if answer.strip():
            reason += f": {' '.join(answer.split())[:REASON_ANSWER_CHARS]}"
        if status in RETRY_STATUSES or 500 <= status < 600:
            raise DestinationUnavailable(reason, retry_after=retry_after(hint, time.time()))
        raise DestinationRejected(reason, status=status, answer=answer)


def _describe(exc: BaseException) -> str:
    """The exception's name and the first message down its causes (httpx's errors wrap the
    socket's or TLS's and often say nothing themselves)."""
    cause: BaseException | None = exc
    while cause is not None:
        text = str(cause)
        if text:
            return f"{type(exc).__name__}: {text}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _wanted(envelope: Mapping[str, Any], conditions: tuple[Match, ...]) -> bool:
    return all(condition.holds(envelope) for condition in conditions)


async def _read_answer(response: httpx2.Response) -> str:
    """The first ``MAX_ANSWER_BYTES`` of a response body, as text (bad bytes replaced); what
    could be read if reading fails."""
    data = bytearray()
    # Enough read, the rest is given up by cancelling the read: that ends the client's nested
    # stream generators where they wait (leaving the loop would leave them suspended).
    with trio.CancelScope() as enough:
        try:
            async for chunk in response.aiter_bytes():
                data += chunk[: MAX_ANSWER_BYTES - len(data)]
                if len(data) >= MAX_ANSWER_BYTES:
                    enough.cancel()
        except httpx2.HTTPError:
            pass
    return data.decode("utf-8", "replace")
