"""Deterministic generator of chained audit records in the ``seed`` profile format.

Each agent has its own hash chain: ``sequence`` starts at 1, the first record's ``prevHash`` is ""
(genesis), and every record carries

    hash = "sha256:" + hex(sha256(canonical(record without "hash")))

where ``canonical`` is RFC 8785 (JSON Canonicalization Scheme). We compute it with
``orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)``, which produces exactly the RFC 8785 bytes for the
values generated here: ASCII-only strings without control characters (no escapes beyond ``\\"`` and
``\\\\``, which both forms share), ASCII keys (so UTF-8 byte order equals UTF-16 code-unit order),
integers, and floats between 0.01 and 102.38 with a non-zero second decimal (both print them in the
shortest round-trip form without an exponent). Keep generated values inside that subset: non-ASCII
text, whole-number floats (RFC 8785 prints ``45.0`` as ``45``), floats needing an exponent, or -0.0
would make the two forms differ.

Events are interleaved round-robin over the agents (event ``i`` belongs to agent ``i % agents``), in
timestamp order, so each agent's records appear in sequence order.
"""

from __future__ import annotations

import gc
import hashlib
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import orjson

__all__ = [
    "SYSLOG_STYLES",
    "agent_ids",
    "generate_lines",
    "lf_framed",
    "octet_counted",
    "record_hash",
    "syslog_messages",
]

_BASE_TIME = datetime(2026, 2, 13, 10, 45, 23, tzinfo=UTC)

_ROLES = ("customer-service", "billing", "devops", "research", "sales")

# (action, resource templates, methods)
_ACTIONS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "database.query",
        ("postgres://crm/customers", "postgres://crm/orders", "postgres://billing/invoices"),
        ("SELECT", "UPDATE"),
    ),
    (
        "file.read",
        ("/srv/share/contracts/{n}.pdf", "/home/agent/notes/{n}.md", "/etc/app/config-{n}.yaml"),
        ("read",),
    ),
    (
        "http.request",
        ("https://api.example.com/tickets/{n}", "https://kb.example.net/{n}"),
        ("GET", "POST"),
    ),
    (
        "tool.invoke",
        ("tool://shell/exec", "tool://browser/open", "tool://calendar/create"),
        ("call",),
    ),
    ("email.send", ("mailto:customer-{n}@example.org", "mailto:team-{n}@company.com"), ("send",)),
)

_RULES: dict[str, tuple[str, str]] = {
    "allow": ("default-allow-read", "allowed by role policy"),
    "deny": ("block-pii-fields", "PII fields without approved ticket"),
    "redact": ("redact-payment-data", "card numbers masked in response"),
}
_EFFECTS = ("allow", "allow", "allow", "allow", "deny", "redact")

_FIELDS = ("email", "phone", "address", "name", "order_id", "card_last4", "ssn", "notes", "status")
_USERS = ("support-lead@company.com", "ops-oncall@company.com", "analyst-7@company.com")


def agent_ids(agents: int) -> list[str]:
    """Return the agent identifiers used for ``agents`` agents, in order."""
    return [f"{_ROLES[i % len(_ROLES)]}-agent-{i:03d}" for i in range(agents)]


def record_hash(record: dict[str, object]) -> str:
    """Hash of a seed-profile record: sha256 over its canonical form without ``hash``.

    orjson with sorted keys equals RFC 8785 for the value subset this module generates (see the
    module docstring).
    """
    body = {key: value for key, value in record.items() if key != "hash"}
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "sha256:" + digest


class _Clock:
    """Formats millisecond timestamps, re-rendering the date part only when the second changes."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, offset_ms: int) -> str:
        second, millis = divmod(offset_ms, 1000)
        if second != self._second:
            moment = _BASE_TIME + timedelta(seconds=second)
            self._second = second
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._prefix}{millis:03d}Z"


_Template = tuple[str, str, str, str, str, dict[str, object]]


def _templates(rng: random.Random, count: int) -> list[_Template]:
    """A pool of event bodies (action, effect, rule, reason, user, requestDetails) to draw from."""
    pool: list[_Template] = []
    for _ in range(count):
        action, resources, methods = rng.choice(_ACTIONS)
        effect = rng.choice(_EFFECTS)
        rule, reason = _RULES[effect]
        details: dict[str, object] = {
            "method": rng.choice(methods),
            "resource": rng.choice(resources).format(n=rng.randint(1, 99999)),
            "fields": rng.sample(_FIELDS, rng.randint(1, 2)),
        }
        pool.append((action, effect, rule, reason, rng.choice(_USERS), details))
    return pool


_POOL_BITS = 10


def generate_lines(events: int, agents: int, seed: int = 0) -> list[bytes]:
    """Return ``events`` encoded records (each ``bytes`` ending in ``b"\\n"``), ~520 bytes each.

    Deterministic for a given ``(events, agents, seed)``. Every agent's chain is complete and valid.
    """
    if events < 0 or agents < 1:
        raise ValueError("events must be >= 0 and agents >= 1")
    rng = random.Random(seed)
    pool = _templates(rng, 1 << _POOL_BITS)
    sessions = [f"sess_{rng.getrandbits(32):08x}" for _ in range(agents)]
    # Nothing here forms reference cycles; collections would only rescan live objects and slow
    # large runs down about twofold.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _chains(events, agents, rng, pool, sessions)
    finally:
        if gc_was_enabled:
            gc.enable()


def _chains(
    events: int, agents: int, rng: random.Random, pool: list[_Template], sessions: list[str]
) -> list[bytes]:
    ids = agent_ids(agents)
    prev_hash = [""] * agents
    clock = _Clock()
    lines: list[bytes] = []
    offset_ms = 0
    getrandbits = rng.getrandbits
    dumps = orjson.dumps
    sha256 = hashlib.sha256
    sort_keys = orjson.OPT_SORT_KEYS
    newline = orjson.OPT_APPEND_NEWLINE
    for i in range(events):
        agent = i % agents
        offset_ms += getrandbits(2)
        if getrandbits(6) == 0:
            sessions[agent] = f"sess_{getrandbits(32):08x}"
        action, effect, rule, reason, user, details = pool[getrandbits(_POOL_BITS)]
        record: dict[str, object] = {
            "sequence": i // agents + 1,
            "timestamp": clock.format(offset_ms),
            "action": action,
            "effect": effect,
            "matchedRule": rule,
            "reason": reason,
            "agentId": ids[agent],
            "sessionId": sessions[agent],
            "userId": user,
            "requestDetails": details,
            # Never a whole number: RFC 8785 prints 45.0 as "45", orjson as "45.0".
            "evaluationDurationMs": (getrandbits(10) * 10 + getrandbits(3) + 1) / 100,
            "prevHash": prev_hash[agent],
        }
        # Same computation as record_hash(), inlined: the record has no "hash" key yet.
        digest = "sha256:" + sha256(dumps(record, option=sort_keys)).hexdigest()
        # Field order as agents write it: hash, then prevHash (order does not affect the hash).
        del record["prevHash"]
        record["hash"] = digest
        record["prevHash"] = prev_hash[agent]
        prev_hash[agent] = digest
        lines.append(dumps(record, option=newline))
    return lines


# ---------------------------------------------------------------------------------------------
# The same records as syslog messages (bench.syslog, and ``python -m bench --protocol syslog``).
# ---------------------------------------------------------------------------------------------

SYSLOG_STYLES = ("rfc5424", "rfc5424-nil-sd", "rfc3164", "rfc3164-local", "cisco")
"""What :func:`syslog_messages` can write.

* ``rfc5424``: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD][SD] RECORD``, as rsyslog forwards
  with ``RSYSLOG_SyslogProtocol23Format`` (microseconds and a numeric offset), two SD-ELEMENTs;
* ``rfc5424-nil-sd``: the same without STRUCTURED-DATA (``-``), what rsyslog forwards for a
  message that carried none;
* ``rfc3164``: ``<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: RECORD`` (``RSYSLOG_TraditionalForwardFormat``);
* ``rfc3164-local``: ``<PRI>Mmm dd hh:mm:ss TAG[PID]: RECORD``, what ``syslog(3)`` writes to
  ``/dev/log`` (no hostname);
* ``cisco``: ``<PRI>SEQ: *Mmm dd hh:mm:ss.mmm: %FACILITY-SEV-MNEMONIC: text``, Cisco IOS with
  ``service sequence-numbers`` (a short text message, not the record).
"""

_CISCO_TEXTS = (
    b"%SYS-5-CONFIG_I: Configured from console by vty0 (10.20.0.7)",
    b"%LINEPROTO-5-UPDOWN: Line protocol on Interface GigabitEthernet0/1, changed state to up",
    b"%SEC-6-IPACCESSLOGP: list 101 denied tcp 10.1.2.3(51234) -> 10.20.0.9(22), 1 packet",
    b"%LINK-3-UPDOWN: Interface GigabitEthernet0/2, changed state to down",
)


def syslog_messages(lines: Sequence[bytes], style: str) -> list[bytes]:
    """Each record of ``lines`` (from :func:`generate_lines`) as one syslog message (no framing).

    The header is derived from the record: its agent gives HOSTNAME, PROCID and the SD origin
    address, its timestamp TIMESTAMP, its effect the severity (``deny`` is ``warning``, the rest
    ``info``; facility ``local0``). Deterministic; not meant to be timed.
    """
    if style not in SYSLOG_STYLES:
        raise ValueError(f"unknown syslog style {style!r}")
    out: list[bytes] = []
    agents: dict[str, int] = {}
    for index, line in enumerate(lines):
        body = line.rstrip(b"\n")
        record = orjson.loads(body)
        agent = str(record["agentId"])
        number = agents.setdefault(agent, len(agents))
        pri = 132 if record["effect"] == "deny" else 134
        stamp = str(record["timestamp"])  # 2026-02-13T10:45:23.003Z
        moment = datetime.fromisoformat(stamp)
        bsd = f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S}".encode()
        pid = 2000 + number
        if style.startswith("rfc5424"):
            micros = f"{stamp[:-1]}{index % 1000:03d}+00:00"
            sd = (
                "-"
                if style == "rfc5424-nil-sd"
                else f'[origin ip="10.20.{number // 250}.{number % 250 + 1}" software="agent-audit"'
                f' swVersion="2.4.1"][meta sequenceId="{index + 1}"]'
            )
            header = f"<{pri}>1 {micros} {agent}.agents.example.com agent-audit {pid} audit {sd} "
            out.append(header.encode() + body)
        elif style == "rfc3164":
            out.append(b"<%d>%b %b agent-audit[%d]: %b" % (pri, bsd, agent.encode(), pid, body))
        elif style == "rfc3164-local":
            out.append(b"<%d>%b agent-audit[%d]: %b" % (pri, bsd, pid, body))
        else:
            millis = stamp[-4:-1].encode()
            text = _CISCO_TEXTS[index % len(_CISCO_TEXTS)]
            out.append(b"<189>%d: *%b.%b: %b" % (index + 1, bsd, millis, text))
    return out


def octet_counted(messages: Iterable[bytes]) -> bytes:
    """``messages`` as one stream with octet counting (RFC 6587 3.4.1): ``MSG-LEN SP MSG``."""
    return b"".join(b"%d %b" % (len(message), message) for message in messages)


def lf_framed(messages: Iterable[bytes]) -> bytes:
    """``messages`` as one stream of LF-terminated lines (RFC 6587 3.4.2)."""
    return b"".join(message + b"\n" for message in messages)
