"""The API's security: a non-loopback address needs TLS and a token (``validate`` refuses it
otherwise), the token guards every endpoint but liveness, and TLS is served with the configured
certificate."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from shipper import cli, cli_top
from shipper.api.client import TOKEN_ENV, Api, ApiError, ApiSettings, locate, required
from shipper.config import parse_config
from shipper.config.root import is_loopback
from shipper.errors import EX_CONFIG, ConfigError
from shipper.shutdown import Shutdown, run_daemon
from tests.conftest import LogCapture, TlsFiles, file_sink_config
from tests.test_cli import write_config

TOKEN = "s3cret-token-for-tests"


def api_config(tmp_path: Path, **api: Any) -> dict[str, Any]:
    raw = file_sink_config(tmp_path)
    raw["api"] = api
    return raw


def validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: dict[str, Any]
) -> tuple[int, str]:
    """``shipper validate`` of ``raw``: its exit status and stderr."""
    code = cli.main(["validate", "-c", str(write_config(tmp_path / "shipper.toml", raw))])
    return code, capsys.readouterr().err


def test_validate_refuses_a_non_loopback_address_without_tls_and_token(
    tmp_path: Path,
    tls_files: TlsFiles,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``0.0.0.0`` without ``[api.tls]`` and a token is refused naming both; with only one, the
    other is named; with both (the token from the environment), and on loopback without
    either, the config is valid."""
    monkeypatch.setenv("API_TOKEN", TOKEN)
    tls = {"cert": str(tls_files.server_pem), "key": str(tls_files.server_key)}
    code, err = validate(tmp_path, capsys, api_config(tmp_path, address="0.0.0.0:8686"))
    assert code == EX_CONFIG
    assert "api.address: 0.0.0.0:8686 is not a loopback address" in err
    assert "requires [api.tls] (cert, key) and token" in err
    code, err = validate(tmp_path, capsys, api_config(tmp_path, address="0.0.0.0:8686", tls=tls))
    assert code == EX_CONFIG
    assert 'requires token = "${ENV}"' in err
    assert "[api.tls]" not in err
    code, err = validate(
        tmp_path, capsys, api_config(tmp_path, address="10.1.2.3:8686", token="${API_TOKEN}")
    )
    assert code == EX_CONFIG
    assert "requires [api.tls] (cert, key)" in err
    assert "token =" not in err
    code, err = validate(
        tmp_path,
        capsys,
        api_config(tmp_path, address="0.0.0.0:8686", tls=tls, token="${API_TOKEN}"),
    )
    assert (code, err) == (0, "")
    code, err = validate(tmp_path, capsys, api_config(tmp_path, address="127.0.0.1:8686"))
    assert (code, err) == (0, "")
    assert TOKEN not in capsys.readouterr().out


def test_loopback_hosts() -> None:
    """localhost, 127.0.0.0/8 and ::1 are loopback; a wildcard, another address or a name are
    not."""
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.5.5.5", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "shipper.example"]))


async def test_the_token_guards_every_endpoint_but_liveness_over_tls(
    tmp_path: Path, tls_files: TlsFiles, logs: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``[api.tls]`` and a token: the daemon serves HTTPS with the configured certificate
    (a client trusting the test CA connects; plain HTTP gets no answer); without a token, with
    a wrong one or another scheme every endpoint answers 401, the right token gets 200, and
    ``/health/live`` needs none; the login form's cookie is Secure; the CLI's client sends the
    config's token and trusts ``--api-ca``."""
    raw = api_config(
        tmp_path,
        address="127.0.0.1:0",
        token="${API_TOKEN}",
        tls={"cert": str(tls_files.server_pem), "key": str(tls_files.server_key)},
    )
    config = parse_config(raw, {"API_TOKEN": TOKEN})
    trusted = ssl.create_default_context(cafile=str(tls_files.ca_pem))
    answers: dict[str, list[int]] = {}
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon, config, shutdown)
        (entry,) = logs.entries("api_listening")
        url = entry["url"]
        async with httpx2.AsyncClient(base_url=url, verify=trusted) as client:
            for path in ("/health", "/health/ready", "/metrics", "/api/chains", "/health/live"):
                answers[path] = [
                    (await client.get(path, headers=headers)).status_code
                    for headers in (
                        {},
                        {"Authorization": "Bearer wrong"},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}"},
                    )
                ]
            refused = await client.get("/metrics")
            login = await client.post("/login", data={"token": TOKEN})
        with pytest.raises(httpx2.HTTPError):
            async with httpx2.AsyncClient() as plain:
                await plain.get(url.replace("https://", "http://"))
        with pytest.raises(httpx2.ConnectError):  # the system's CAs do not know the test CA
            async with httpx2.AsyncClient(base_url=url) as untrusting:
                await untrusting.get("/health/live")
        api = locate(url, ApiSettings.of(config), str(tls_files.ca_pem))
        assert api is not None
        assert api.token == TOKEN
        async with api.session() as session:
            served = await session.get_json("/api/chains")
        with pytest.raises(ApiError, match="refused the token given: 401"):
            async with Api(url, "wrong", str(tls_files.ca_pem)).session() as session:
                await session.get_json("/api/chains")
        shutdown.request("test")
    assert url.startswith("https://127.0.0.1:")
    for path in ("/health", "/health/ready", "/metrics", "/api/chains"):
        assert answers[path] == [401, 401, 401, 200], path
    assert answers["/health/live"] == [200, 200, 200, 200]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "; secure" in login.headers["set-cookie"].lower()  # over HTTPS only
    assert served["agents"] == {}


def test_the_cli_finds_the_api_from_its_flag_or_the_config(
    tmp_path: Path, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--api`` wins over the config; a config's address becomes an http URL, or https with
    ``[api.tls]``, a wildcard host is reached on loopback; the token comes from the config,
    else the environment; no address anywhere is no API."""
    monkeypatch.setenv("SHIPPER_API_TOKEN", "from-env")
    monkeypatch.setenv("SHIPPER_API_CA", "/env/ca.pem")
    plain = ApiSettings.of(parse_config(api_config(tmp_path, address="127.0.0.1:8686")))
    assert locate(None, plain) == Api("http://127.0.0.1:8686", "from-env", "/env/ca.pem")
    assert locate("https://shipper.example:9000/", plain, "ca.pem") == Api(
        "https://shipper.example:9000", "from-env", "ca.pem"
    )
    secured = ApiSettings.of(
        parse_config(
            api_config(
                tmp_path,
                address="0.0.0.0:8686",
                token="${API_TOKEN}",
                tls={"cert": str(tls_files.server_pem), "key": str(tls_files.server_key)},
            ),
            {"API_TOKEN": TOKEN},
        )
    )
    assert locate(None, secured) == Api("https://127.0.0.1:8686", TOKEN, "/env/ca.pem")
    assert locate("[::]:8686", None) == Api("http://[::1]:8686", "from-env", "/env/ca.pem")
    assert locate(None, ApiSettings.of(parse_config(file_sink_config(tmp_path)))) is None


def test_a_command_that_needs_the_api_says_what_to_pass_when_none_is_told(tmp_path: Path) -> None:
    """``required`` (tap, top) takes the config's ``[api] address``, takes ``--api`` even with no
    config file, and refuses, saying to pass ``--api``, a config without an API or with port 0."""
    config = tmp_path / "shipper.toml"
    rest = (
        f'data_dir = "{tmp_path}"\n'
        '[sources.agents]\ntype = "json_tls"\naddress = "127.0.0.1:0"\n'
        f'[sinks.archive]\ntype = "file"\npath = "{tmp_path}/archive"\n'
    )
    config.write_text(rest + '[api]\naddress = "127.0.0.1:8686"\n')
    assert required(None, str(config)).url == "http://127.0.0.1:8686"
    assert required("127.0.0.1:9000", str(tmp_path / "absent.toml")).url == "http://127.0.0.1:9000"
    config.write_text(rest)
    with pytest.raises(ApiError, match=r"has no \[api\] address.*pass --api"):
        required(None, str(config))
    config.write_text(rest + '[api]\naddress = "127.0.0.1:0"\n')
    with pytest.raises(ApiError, match="lets the kernel choose the port; pass --api"):
        required(None, str(config))


async def test_a_browser_gives_the_token_once_through_the_login_form_and_holds_it_in_a_cookie(
    tmp_path: Path, logs: LogCapture
) -> None:
    """With a token set, a browser asking for the status page gets a login form (401); the
    right token posted there sets an HttpOnly, SameSite=Strict cookie and sends it to ``/``;
    with that cookie the page, its summary and the metrics answer 200, with a wrong one 401."""
    config = parse_config(
        api_config(tmp_path, address="127.0.0.1:0", token="${API_TOKEN}"), {"API_TOKEN": TOKEN}
    )
    html = {"Accept": "text/html,application/xhtml+xml"}
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon, config, shutdown)
        (entry,) = logs.entries("api_listening")
        async with httpx2.AsyncClient(base_url=entry["url"]) as client:
            asked = await client.get("/", headers=html)
            wrong = await client.post("/login", data={"token": "wrong"})
            right = await client.post("/login", data={"token": TOKEN})
        with_cookie: dict[str, int] = {}
        async with httpx2.AsyncClient(
            base_url=entry["url"], cookies={"shipper_token": TOKEN}
        ) as browser:
            for path in ("/", "/api/status", "/metrics"):
                with_cookie[path] = (await browser.get(path)).status_code
        async with httpx2.AsyncClient(
            base_url=entry["url"], cookies={"shipper_token": "wrong"}
        ) as forged:
            forged_answer = (await forged.get("/api/status")).status_code
        shutdown.request("test")
    assert asked.status_code == 401
    assert '<form method="post" action="/login">' in asked.text
    assert wrong.status_code == 401
    assert "not the token" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert (right.status_code, right.headers["location"]) == (303, "/")
    cookie = right.headers["set-cookie"].lower()
    assert cookie.startswith(f"shipper_token={TOKEN}".lower())
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP on loopback: a Secure cookie would not come back
    assert with_cookie == {"/": 200, "/api/status": 200, "/metrics": 200}
    assert forged_answer == 401


async def test_the_api_commands_say_whether_a_token_was_sent_and_when_tls_failed(
    tmp_path: Path,
    logs: LogCapture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against an API that requires a token, ``shipper top``, ``tap`` and ``reload`` sent none
    say to set ``$SHIPPER_API_TOKEN``, sent a wrong one say it was refused; https asked of a
    plain API is said to be a TLS failure, not a daemon that is not running."""
    config = parse_config(
        api_config(tmp_path, address="127.0.0.1:0", token="${API_TOKEN}"), {"API_TOKEN": TOKEN}
    )
    found: dict[str, str] = {}

    def call(name: str, api: Api) -> None:
        try:
            cli_top.fetch_status(api)
        except ApiError as exc:
            found[f"top {name}"] = str(exc)
        if api.token is not None:
            monkeypatch.setenv(TOKEN_ENV, api.token)
        assert cli.main(["tap", "--api", api.url]) == 1
        found[f"tap {name}"] = capsys.readouterr().err
        assert cli.main(["reload", "--api", api.url, "-c", "none"]) == 1
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        found[f"reload {name}"] = capsys.readouterr().err

    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon, config, shutdown)
        (entry,) = logs.entries("api_listening")
        url = entry["url"]
        await trio.to_thread.run_sync(call, "none", Api(url))
        await trio.to_thread.run_sync(call, "wrong", Api(url, "wrong"))
        await trio.to_thread.run_sync(call, "tls", Api(url.replace("http:", "https:"), TOKEN))
        shutdown.request("test")
    for command in ("top", "tap", "reload"):
        assert "refused no token (set $SHIPPER_API_TOKEN): 401" in found[f"{command} none"]
        assert "refused the token given: 401" in found[f"{command} wrong"]
        assert "TLS with the API at https://" in found[f"{command} tls"]


def test_a_command_reads_the_api_table_alone_so_the_daemons_secrets_need_not_be_set_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config whose sinks name variables this shell does not have (systemd gives them to the
    daemon) still tells a command its API: ``required`` and ``ApiSettings.read`` read the
    ``[api]`` table alone; a token whose variable is not set here gives way to
    ``$SHIPPER_API_TOKEN``; an address that is none is still a config error."""
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    monkeypatch.delenv("API_TOKEN", raising=False)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    config = tmp_path / "shipper.toml"
    config.write_text(
        f'data_dir = "{tmp_path}"\n'
        '[sources.agents]\ntype = "json_tls"\naddress = "127.0.0.1:0"\n'
        '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/in"\n'
        'signing_secret = "${HOOK_SECRET}"\n'
        '[api]\naddress = "0.0.0.0:8686"\ntoken = "${API_TOKEN}"\n'
        '[api.tls]\ncert = "c.pem"\nkey = "k.pem"\n'
    )
    assert ApiSettings.read(str(config)) == ApiSettings("0.0.0.0:8686", True, None)
    assert ApiSettings.read(str(config), {"API_TOKEN": TOKEN}).token == TOKEN
    assert required(None, str(config)) == Api("https://127.0.0.1:8686", "from-env", None)
    config.write_text('[api]\naddress = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"api\.address"):
        ApiSettings.read(str(config))
