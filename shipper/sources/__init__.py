"""Sources: listeners that frame and decode what senders send and hand events to the pipeline."""

from __future__ import annotations

from pathlib import Path

from shipper.config import Address

#: Where a source listens: a TCP/UDP address, or a unix socket's path.
Listening = Address | Path
