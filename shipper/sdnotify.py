"""systemd's notification protocol (``sd_notify``), enough for ``Type=notify`` and the watchdog.

The service manager passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace);
each notification is one datagram of ``KEY=VALUE`` lines: ``READY=1`` once listening,
``STOPPING=1`` when shutdown begins, ``RELOADING=1`` with ``MONOTONIC_USEC=`` (the monotonic
clock, which ``Type=notify-reload`` requires and ``Type=notify`` takes too) when a reload begins
and ``READY=1`` again once it is done, ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``/2,
``STATUS=`` free text. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket

import trio

from shipper.logging import get_logger

log = get_logger("shipper.sdnotify")


def notify(state: str) -> bool:
    """Send one notification; False when not under systemd or when the socket refused it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", state=state, error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None if not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    owner = os.environ.get("WATCHDOG_PID")
    if not usec or (owner and owner != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def watchdog() -> None:
    """Ping the watchdog for as long as the event loop runs (a stuck loop stops the pings)."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)
