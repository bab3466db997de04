"""Identity binding: which agent ids and hostnames a client certificate may speak for.

A source with ``[sources.X.identity]`` (TLS with a ``client_ca``: ``json_tls``, and ``syslog`` with
``mode = "tls"``) checks every event against the verified client certificate of its connection::

    [sources.syslog_tls.identity]
    "host-7" = ["host-7", "customer-service-agent-*"]   # a subjectAltName value
    "CN=ingest-relay" = ["*"]                           # a subject attribute, or the whole subject

Keys name a certificate:

* a key that starts with an attribute type and ``=`` (``CN=ingest-relay``, ``OU=relays``) names the
  subject: it matches one attribute of it, or the whole subject, written as in the envelope's
  ``source.tls_subject`` (RFC 4514, special characters escaped with ``\\``);
* any other key is a subjectAltName value (DNS name, URI, email address or IP address), as in
  ``source.tls_san``.

Values are lists of shell-style patterns (``*``, ``?``, ``[...]``, Python's ``fnmatch``) of what a
certificate may claim. Every key that matches the certificate adds its patterns. The claims of an
event are its agent id (``agent``: the record's agent field, when it is a non-empty string or an
integer, see ``Profile.agent_of``; any other value is no claim, and the event then has no ``agent``
and is not chain-verified) and, for syslog, the message's HOSTNAME (``syslog.hostname``; NILVALUE or
none is no claim). A record that names a member twice never gets here: it is ``malformed``
(``shipper.codecs.jsonlines``). Agent ids match case-sensitively, hostnames
case-insensitively (DNS names are). An event passes when every claim matches a pattern.

It does not pass, and gets ``identity_mismatch``, when a claim matches no pattern, or when the
certificate matches no key (or there is no certificate: ``require_client_cert = false``), whatever
it claims. The event is archived all the same (never dropped), and right after it comes a
``shipper.identity_alert`` event. ``identity_mismatch`` is::

    {"reason": "claim not allowed for this certificate"      (or "certificate has no identity
                                                              entry", "no client certificate"),
     "claimed": {"agent": "customer-service-agent-09", "hostname": "host-7"},
     "mismatched": ["agent"],                                 (the claims that matched no pattern)
     "tls_subject": "CN=host-7", "tls_san": ["host-7"],
     "entries": ["host-7"],                                   (the keys that matched the certificate)
     "allowed": ["host-7", "customer-service-agent-*"]}       (their patterns)

The alert's ``record`` holds the same fields plus ``action``, ``agent``, ``status``
(``"identity_mismatch"``), ``severity`` (``"critical"``), ``source`` (the source id), ``peer`` and
``event_received_at``.

This module is pure: no trio, no sockets.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from shipper.events import Event

REASON_NOT_ALLOWED: Final = "claim not allowed for this certificate"
REASON_NO_ENTRY: Final = "certificate has no identity entry"
REASON_NO_CERT: Final = "no client certificate"
_SUBJECT_KEY_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9.-]*=")

#: ``[sources.X.identity]``: certificate identity -> patterns of the agent ids and hostnames it may
#: claim.
IdentityTable = Mapping[str, tuple[str, ...]]


def subject_attributes(subject: str) -> list[str]:
    """The ``TYPE=value`` parts of an RFC 4514 subject, as written (split at unescaped , and +)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in subject:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in ",+":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part]


def _any_of(patterns: Sequence[str], flags: int = 0) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), flags)


@dataclass(frozen=True)
class Grant:
    """What one certificate may claim: the table's entries that match it, and their patterns."""

    tls_subject: str | None
    tls_san: tuple[str, ...]
    entries: tuple[str, ...]
    allowed: tuple[str, ...]
    agents: re.Pattern[str]
    hostnames: re.Pattern[str]

    def check(self, agent: str | None, hostname: str | None) -> dict[str, Any] | None:
        """The ``identity_mismatch`` object for these claims, or None when they are allowed."""
        claimed: dict[str, str] = {}
        mismatched: list[str] = []
        if agent is not None:
            claimed["agent"] = agent
            if self.agents.fullmatch(agent) is None:
                mismatched.append("agent")
        if hostname is not None:
            claimed["hostname"] = hostname
            if self.hostnames.fullmatch(hostname) is None:
                mismatched.append("hostname")
        if self.entries and not mismatched:
            return None
        if self.entries:
            reason = REASON_NOT_ALLOWED
        elif self.tls_subject is None and not self.tls_san:
            reason = REASON_NO_CERT
        else:
            reason = REASON_NO_ENTRY
        return {
            "reason": reason,
            "claimed": claimed,
            "mismatched": mismatched,
            "tls_subject": self.tls_subject,
            "tls_san": list(self.tls_san),
            "entries": list(self.entries),
            "allowed": list(self.allowed),
        }


class IdentityPolicy:
    """The ``[sources.X.identity]`` table, ready to grant certificates what they may claim."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {key: tuple(patterns) for key, patterns in table.items()}

    def grant(self, tls_subject: str | None, tls_san: Sequence[str]) -> Grant:
        """What the certificate with this subject and these SANs may claim (once per connection)."""
        names: set[str] = set(tls_san)
        subject_names: set[str] = set()
        if tls_subject:
            subject_names = {tls_subject, *subject_attributes(tls_subject)}
        entries: list[str] = []
        allowed: list[str] = []
        for key, patterns in self.table.items():
            is_subject_key = _SUBJECT_KEY_RE.match(key) is not None
            if key in (subject_names if is_subject_key else names):
                entries.append(key)
                allowed.extend(p for p in patterns if p not in allowed)
        return Grant(
            tls_subject,
            tuple(tls_san),
            tuple(entries),
            tuple(allowed),
            _any_of(allowed),
            _any_of(allowed, re.IGNORECASE),
        )


def claims(event: Event) -> tuple[str | None, str | None]:
    """The agent id and the syslog HOSTNAME an event claims (None: no claim)."""
    hostname = event.syslog.get("hostname") if event.syslog is not None else None
    return event.agent, hostname if isinstance(hostname, str) and hostname else None
