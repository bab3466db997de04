"""Takes the README's picture of the status page (``docs/status-page.png``): a daemon in this
process, fed half a minute of audit records from sixteen agents (one with a gap, one with a
fork, one with an edited record) and syslog lines, with a webhook sink whose receiver is down,
photographed by the same headless chromium as the page's test (``tests.browser``).

    .venv/bin/python -m tools.status_screenshot [--output docs/status-page.png] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import trio
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shipper.config import Address, parse_config
from shipper.logging import configure
from shipper.shutdown import Shutdown, run_daemon
from tests.browser import browser_missing, headless_chrome
from tests.chains import chain, seed_hash
from tests.conftest import LogCapture, free_port

AGENTS = [
    f"{role}-agent-{n:02d}"
    for role in ("customer-service", "billing", "refund", "triage")
    for n in range(1, 5)
]
GAP, FORK, EDITED = "billing-agent-03", "refund-agent-02", "triage-agent-04"


def config(root: Path) -> dict[str, Any]:
    return {
        "data_dir": str(root / "var"),
        "shutdown_timeout": "2s",
        "api": {"address": "127.0.0.1:0"},
        "sources": {
            "agents_json": {"type": "json_tls", "address": "127.0.0.1:0"},
            "syslog": {"type": "syslog", "mode": "tcp", "address": "127.0.0.1:0"},
        },
        "sinks": {
            "archive": {"type": "file", "path": str(root / "archive")},
            "compliance_hook": {
                "type": "webhook",
                "url": f"http://127.0.0.1:{free_port()}/audit",
            },
        },
    }


def records_of(agent: str, count: int) -> list[bytes]:
    """``agent``'s chain, with its planted fault if it has one."""
    records = chain(count, agent)
    if agent == GAP:
        del records[count // 3 : count // 3 + 4]
    if agent == FORK:
        other = {**records[count // 2], "effect": "allow", "requestDetails": {"rows": 0}}
        other["hash"] = seed_hash(other)
        records.insert(count // 2 + 5, other)
    if agent == EDITED:
        records[count // 4] = {**records[count // 4], "effect": "override"}
    return [json.dumps(record).encode() + b"\n" for record in records]


async def feed(agents: Address, syslog: Address, seconds: float) -> None:
    """Records from every agent, in slices, at a rate that rises and falls; syslog lines."""
    per_agent = {agent: records_of(agent, 400) for agent in AGENTS}
    streams = {agent: await trio.open_tcp_stream(agents.host, agents.port) for agent in AGENTS}
    log_stream = await trio.open_tcp_stream(syslog.host, syslog.port)
    steps = int(seconds / 0.25)
    try:
        for step in range(steps):
            rising = 1 + 6 * min(step, steps - step) // max(1, steps // 2)
            for agent, stream in streams.items():
                taken, per_agent[agent] = per_agent[agent][:rising], per_agent[agent][rising:]
                if taken:
                    await stream.send_all(b"".join(taken))
            line = f"<38>1 2026-12-03T13:00:{step % 60:02d}Z gw-1 sshd 811 - - session opened\n"
            await log_stream.send_all(line.encode())
            await trio.sleep(0.25)
    finally:
        for stream in [*streams.values(), log_stream]:
            await stream.aclose()


async def take(output: Path, seconds: float) -> None:
    logs = LogCapture()
    configure("info", stream=logs.stream)
    with tempfile.TemporaryDirectory() as root:
        shutdown = Shutdown()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(run_daemon, parse_config(config(Path(root))), shutdown)
            (entry,) = logs.entries("api_listening")
            async with trio.open_nursery() as feeding:
                feeding.start_soon(feed, bound["agents_json"][0], bound["syslog"][0], seconds)
                await trio.sleep(seconds * 0.8)  # photographed while records still come

                def photograph() -> None:
                    with headless_chrome(1400, 1000) as driver:
                        driver.get(entry["url"] + "/")
                        WebDriverWait(driver, 60).until(
                            lambda d: (
                                len(d.find_elements(By.CSS_SELECTOR, "#agents tr.problem")) >= 3
                            )
                        )
                        height = driver.execute_script("return document.body.scrollHeight")
                        driver.set_window_size(1400, int(height) + 200)  # (the window's frame)
                        driver.save_screenshot(str(output))

                await trio.to_thread.run_sync(photograph)
                feeding.cancel_scope.cancel()
            shutdown.request("screenshot taken")
            shutdown.request("the webhook's receiver is down on purpose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/status-page.png"))
    parser.add_argument("--seconds", type=float, default=30.0, help="how long traffic flows")
    args = parser.parse_args()
    missing = browser_missing()
    if missing is not None:
        raise SystemExit(f"no headless browser: {missing}")
    trio.run(take, args.output, args.seconds)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
