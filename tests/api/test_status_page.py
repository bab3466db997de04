"""The status page at ``/`` in a real headless browser: it updates live from the server-sent
events, shows the planted gap and fork first in the agents table, its rates move, and it loads
nothing from anywhere but the daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.api.test_status import RECORDS, planted, send
from tests.browser import browser_missing, headless_chrome
from tests.chains import chain_lines
from tests.conftest import LogCapture, api_daemon, file_sink_config

pytestmark = pytest.mark.skipif(
    browser_missing() is not None, reason=f"no headless browser: {browser_missing()}"
)

#: How long the page may take to show what the test waits for (a guard against a hang).
PATIENCE = 60


def agent_rows(driver: WebDriver) -> list[tuple[str, str, bool]]:
    """The agents table's rows as (agent, status, shown as a problem)."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#agents tbody tr[data-agent]")
    return [
        (
            str(row.get_attribute("data-agent")),
            str(row.get_attribute("data-status")),
            "problem" in str(row.get_attribute("class")),
        )
        for row in rows
    ]


def received_now(driver: WebDriver) -> float:
    return float(driver.find_element(By.ID, "received-now").text.replace(",", ""))


async def test_the_page_shows_the_planted_gap_and_fork_and_moving_rates(
    tmp_path: Path, logs: LogCapture
) -> None:
    """The page, opened before anything is sent, comes to show the fork then the gap first in
    the agents table (as problems) and the healthy agent after them; the received rate rises
    above zero while records come and falls back to zero after; the source's row counts every
    record sent; and every resource the page loaded came from the daemon."""
    async with api_daemon(file_sink_config(tmp_path), logs) as daemon:
        url, nursery = daemon.url, daemon.nursery
        address = daemon.bound["agents"][0]
        page_open = trio.Event()
        rate_seen = trio.Event()
        sent_all = trio.Event()
        results: dict[str, Any] = {}
        token = trio.lowlevel.current_trio_token()

        def browse() -> None:
            with headless_chrome() as driver:
                driver.get(url + "/")
                wait = WebDriverWait(driver, PATIENCE)
                wait.until(lambda d: d.find_element(By.ID, "link").text == "live")
                trio.from_thread.run_sync(page_open.set, trio_token=token)
                wait.until(lambda d: received_now(d) > 0)
                results["rate_seen"] = received_now(driver)
                trio.from_thread.run_sync(rate_seen.set, trio_token=token)
                wait.until(lambda d: [r[0] for r in agent_rows(d)][:2] == ["forked", "gappy"])
                results["rows"] = agent_rows(driver)
                trio.from_thread.run(sent_all.wait, trio_token=token)
                wait.until(lambda d: received_now(d) == 0)
                source = driver.find_element(By.CSS_SELECTOR, '#sources tr[data-source="agents"]')
                wait.until(lambda d: source.find_elements(By.TAG_NAME, "td")[2].text == sent())
                results["resources"] = driver.execute_script(
                    "return performance.getEntriesByType('resource').map(e => e.name)"
                    ".concat([location.href])"
                )

        trickle = chain_lines(2000, "trickle")
        count = {"sent": 0}

        def sent() -> str:
            return f"{count['sent']:,}"

        async def traffic() -> None:
            await page_open.wait()
            sends = planted()
            for name in ("steady", "gappy", "forked"):
                await send(address, sends[name])
            count["sent"] = RECORDS
            # then records in small slices, until the page saw a rate: it must see them come
            for first in range(0, len(trickle), 20):
                await send(address, b"".join(trickle[first : first + 20]))
                count["sent"] += len(trickle[first : first + 20])
                with trio.move_on_after(0.1):
                    await rate_seen.wait()
                if rate_seen.is_set():
                    break
            sent_all.set()

        nursery.start_soon(traffic)
        await trio.to_thread.run_sync(browse)
    assert results["rate_seen"] > 0
    assert results["rows"][:2] == [("forked", "fork", True), ("gappy", "gap", True)]
    assert ("steady", "ok", False) in results["rows"][2:]
    assert results["resources"]
    assert all(name.startswith(url + "/") for name in results["resources"])
