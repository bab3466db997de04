"""``/api/chains`` of a running daemon, paged, and ``shipper chain status`` through the API or,
when no daemon answers or none is configured, from the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import trio

from shipper import cli
from shipper.chain import SEED, Verifier
from shipper.config import parse_config
from shipper.shutdown import Shutdown, run_daemon
from tests.chains import chain, chain_lines
from tests.conftest import LogCapture, file_sink_config, free_port
from tests.test_cli import write_config
from tests.test_daemon import send

AGENTS = [f"agent-{n:02}" for n in range(25)]


def chain_status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run ``shipper chain status --json ARGS``: exit status, the JSON printed, stderr."""
    code = cli.main(["chain", "status", "--json", *args])
    out, err = capsys.readouterr()
    return code, orjson.loads(out) if code == 0 else None, err


@pytest.mark.usefixtures("restore_logging")
async def test_chain_state_is_served_in_pages_and_chain_status_asks_the_api(
    tmp_path: Path, logs: LogCapture, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 25 agents, ``/api/chains?limit=10`` pages through them in name order (``next``,
    ``total_agents``), an agent alone is served and an unknown one is 404; ``shipper chain
    status`` with the config's ``[api] address`` says it asked the API and prints what the files
    say once the daemon has stopped, when it says it read the files."""
    port = free_port()
    raw = file_sink_config(tmp_path)
    raw["api"] = {"address": f"127.0.0.1:{port}"}
    path = write_config(tmp_path / "shipper.toml", raw)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run_daemon, parse_config(raw), shutdown)
        for number, agent in enumerate(AGENTS):
            await send(bound["agents"][0], b"".join(chain_lines(number + 1, agent)))
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            total = sum(range(1, 26))

            async def verified() -> bool:
                response = await client.get("/metrics")
                return f"shipper_wal_events_total {float(total)}" in response.text

            with trio.fail_after(20):
                while not await verified():  # noqa: ASYNC110 - a scrape has no event to await
                    await trio.sleep(0.05)
            pages = []
            after = None
            while True:
                params = {"limit": 10} | ({"after": after} if after else {})
                page = (await client.get("/api/chains", params=params)).json()
                pages.append(page)
                if (after := page["next"]) is None:
                    break
            one = await client.get("/api/chains/agent-07")
            unknown = await client.get("/api/chains/nobody")
            bad = await client.get("/api/chains", params={"limit": 0})
        served = await trio.to_thread.run_sync(chain_status, capsys, "-c", str(path))
        served_one = await trio.to_thread.run_sync(
            chain_status, capsys, "-c", str(path), "--agent", "agent-03"
        )
        shutdown.request("test")
    assert [list(page["agents"]) for page in pages] == [AGENTS[:10], AGENTS[10:20], AGENTS[20:]]
    assert [page["next"] for page in pages] == ["agent-09", "agent-19", None]
    assert {page["total_agents"] for page in pages} == {25}
    assert pages[0]["counts"] == {"genesis": 25, "ok": total - 25}
    assert one.json()["agents"] == {
        "agent-07": {
            "last_sequence": 8,
            "open_gaps": [],
            "counts": {"genesis": 1, "ok": 7},
            "last_alert": None,
        }
    }
    assert unknown.status_code == 404
    assert "nobody" in unknown.json()["error"]
    assert bad.status_code == 400

    code, status, err = served
    assert code == 0
    assert f"from the daemon's API at http://127.0.0.1:{port}" in err
    assert list(status["agents"]) == AGENTS
    assert status["agents"]["agent-24"]["last_sequence"] == 25
    assert served_one[0] == 0
    assert list(served_one[1]["agents"]) == ["agent-03"]

    code, from_files, err = await trio.to_thread.run_sync(chain_status, capsys, "-c", str(path))
    assert code == 0
    assert f"nothing answers at http://127.0.0.1:{port}" in err
    assert "reading the files in" in err
    assert from_files == status


@pytest.mark.usefixtures("restore_logging")
def test_chain_status_without_an_api_reads_the_files_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``[api] address`` or ``--api``, ``chain status`` reads the files and says so; an
    unknown agent asked of the API is exit 1, as from the files."""
    path = write_config(tmp_path / "shipper.toml", file_sink_config(tmp_path))
    code, status, err = chain_status(capsys, "-c", str(path))
    assert code == 0
    assert status["agents"] == {}
    assert "no [api] address in the config and no --api: reading the files in" in err


def test_status_pages_follow_name_order_from_any_name() -> None:
    """A page starts after ``after`` whether or not it names an agent, ``next`` is null on the
    last page, and the pages together are the whole status."""
    verifier = Verifier(SEED, window=8, max_gaps=8, max_agents=100)
    for agent in ("b", "d", "a", "c", "e"):
        (record,) = chain(1, agent)
        verifier.feed(agent, record)
    whole = verifier.status()
    first = verifier.status(limit=2)
    assert (list(first["agents"]), first["next"], first["total_agents"]) == (["a", "b"], "b", 5)
    middle = verifier.status(after="bb", limit=2)
    assert (list(middle["agents"]), middle["next"]) == (["c", "d"], "d")
    last = verifier.status(after="d", limit=2)
    assert (list(last["agents"]), last["next"]) == (["e"], None)
    assert verifier.status(after="e", limit=2)["agents"] == {}
    assert verifier.status(after="c")["agents"] == {k: whole["agents"][k] for k in ("d", "e")}
    assert first["counts"] == whole["counts"] == {"genesis": 5}
