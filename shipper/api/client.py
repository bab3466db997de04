"""How a command of the CLI calls the running daemon's API: the one way for every command
(``chain status``, ``tap``, ``top``, ``reload``).

Where: ``--api`` (``host:port``, or a URL such as ``https://shipper.example:8686``), else the
config's ``[api] address`` (https when it has ``[api.tls]``; a wildcard host, ``0.0.0.0`` or
``::``, is reached on loopback). None of them: the command has no API to ask (``locate``
returns None), and says what it does instead.

Token: the config's ``[api] token``, else the environment variable ``SHIPPER_API_TOKEN``;
sent as ``Authorization: Bearer <token>``. TLS: the server's certificate is verified against
``--api-ca`` (a CA file), else ``SHIPPER_API_CA``, else the system's trusted CAs.

A command uses it so::

    parser: add_api_arguments(subparser)            # --api, --api-ca
    api = locate(args.api, config, args.api_ca)     # None: no API configured
    async with api.session() as session:
        body = await session.get_json("/api/chains", limit=1000)   # ApiError on failure
        async for line in session.stream_lines("/api/tap"): ...   # a live stream

A command that needs the API (``tap``, ``top``) takes it from ``required(args.api, args.config,
args.api_ca)``, and may call it blocking (``api.blocking()``: an ``httpx2.Client``).

``ApiUnreachable`` (a subclass of ``ApiError``) says nothing answered at the address: no daemon
runs there, and a command may fall back to reading the files. Any other ``ApiError`` (refused
token, TLS failure, an error status) is the operator's to fix; its message says what happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipper.errors import EX_CONFIG, ConfigError

if TYPE_CHECKING:
    import httpx2

    from shipper.config import Config

TOKEN_ENV = "SHIPPER_API_TOKEN"
CA_ENV = "SHIPPER_API_CA"
#: Seconds a request may wait for the connection and each read (a live stream: for a read).
TIMEOUT = 10.0


class ApiError(Exception):
    """The API could not answer the request; the message says why (retrying helps only once
    the cause is fixed, except for ``ApiUnreachable`` while the daemon starts)."""


def failed(command: str, config: str, exc: ConfigError | ApiError) -> int:
    """Say on stderr why ``shipper <command>`` could not reach the API, and its exit status:
    ``EX_CONFIG`` when the config file read for the API's address is invalid, 1 otherwise."""
    if isinstance(exc, ConfigError):
        print(exc.report(config), file=sys.stderr)
        return EX_CONFIG
    print(f"shipper {command}: {exc}", file=sys.stderr)
    return 1


class ApiUnreachable(ApiError):
    """Nothing answered at the API's address: the daemon is not running (or not there)."""


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """``--api`` and ``--api-ca``, for a command that calls the API."""
    parser.add_argument(
        "--api",
        metavar="ADDR",
        help="the daemon's API: host:port or a URL (default: the config's [api] address)",
    )
    parser.add_argument(
        "--api-ca",
        metavar="FILE",
        help=f"CA file to verify the API's TLS certificate (default: ${CA_ENV}, else the "
        "system's CAs)",
    )


def base_url(address: str, tls: bool) -> str:
    """The URL of an API at ``address`` (``host:port`` or a URL already)."""
    if "://" in address:
        return address.rstrip("/")
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass(frozen=True)
class Api:
    """Where the API is and how to call it (``locate``); ``session`` opens a connection pool."""

    url: str
    token: str | None = None
    ca: str | None = None

    def _settings(self) -> dict[str, Any]:
        """What every client of this API is made with: its URL, the token's header, and how
        the server's certificate is verified (``ApiError`` for an unusable CA file)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            verify = True if self.ca is None else ssl.create_default_context(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(f"cannot use the CA file {self.ca}: {exc}") from exc
        return {"base_url": self.url, "headers": headers, "verify": verify}

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        import httpx2  # (here: the daemon imports this module, and never calls its API)

        async with httpx2.AsyncClient(**self._settings(), timeout=TIMEOUT) as client:
            yield Session(self, client)

    def blocking(self, timeout: httpx2.Timeout | float = TIMEOUT) -> httpx2.Client:
        """A blocking client of this API, for a command that draws as answers come (``top``)
        or follows a stream line by line (``tap``); status codes are the caller's to check."""
        import httpx2

        return httpx2.Client(**self._settings(), timeout=timeout)


class Session:
    """Requests to one API (``Api.session``)."""

    def __init__(self, api: Api, client: httpx2.AsyncClient) -> None:
        self.api = api
        self._client = client

    async def get(self, path: str, **params: Any) -> httpx2.Response:
        """GET ``path``; ``ApiError`` unless it answers 2xx (or 404, which the caller reads)."""
        import httpx2

        try:
            response = await self._client.get(path, params=_params(params))
        except httpx2.HTTPError as exc:
            raise unanswered(exc, self.api) from exc
        check(response, self.api)
        return response

    async def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` and its JSON body (a 404's too: the caller tells what was not found)."""
        response = await self.get(path, **params)
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(f"{self.api.url}{path} did not answer JSON") from exc

    async def stream_lines(self, path: str, **params: Any) -> AsyncIterator[str]:
        """The lines of a live answer (server-sent events), as they come."""
        import httpx2

        try:
            async with self._client.stream(
                "GET", path, params=_params(params), timeout=httpx2.Timeout(TIMEOUT, read=None)
            ) as response:
                check(response, self.api)
                async for line in response.aiter_lines():
                    yield line
        except httpx2.ConnectError as exc:
            raise unanswered(exc, self.api) from exc
        except httpx2.HTTPError as exc:
            raise ApiError(f"the API at {self.api.url} broke off: {exc}") from exc


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def unanswered(exc: httpx2.HTTPError, api: Api) -> ApiError:
    """What a request to ``api`` that got no answer (``exc``) tells the operator: TLS failed
    (a certificate the CA does not vouch for, or https to a plain API), nothing listens there
    (``ApiUnreachable``), or the API broke off."""
    import httpx2

    cause = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, httpx2.ConnectError):
        if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc):
            return ApiError(f"TLS with the API at {api.url} failed ({cause})")
        return ApiUnreachable(f"nothing answers at {api.url} ({cause})")
    return ApiError(f"the API at {api.url} did not answer ({cause})")


def check(response: httpx2.Response, api: Api) -> None:
    """``ApiError`` for an error status (but 404, which the caller reads): a 401 says whether
    a token was sent at all."""
    status = response.status_code
    if status == 401:
        held = "the token given" if api.token else f"no token (set ${TOKEN_ENV})"
        raise ApiError(f"the API at {api.url} refused {held}: 401 Unauthorized")
    if status >= 400 and status != 404:
        raise ApiError(f"the API at {api.url} answered {status} for {response.url.path}")


@dataclass(frozen=True)
class ApiSettings:
    """What a command needs of a config to call its daemon's API: the ``[api] address``,
    whether there is ``[api.tls]``, and the token (None: none, or its variable is not set)."""

    address: str | None = None
    tls: bool = False
    token: str | None = None

    @classmethod
    def of(cls, config: Config) -> ApiSettings:
        """The settings of a validated config."""
        api = config.api
        return cls(
            None if api.address is None else str(api.address),
            api.tls is not None,
            None if api.token is None else api.token.reveal(),
        )

    @classmethod
    def read(cls, path: str, env: Mapping[str, str] | None = None) -> ApiSettings:
        """The ``[api]`` table of the config file at ``path``, read alone: the rest of the file
        may name variables only the daemon's environment has (a sink's secret from systemd's
        ``EnvironmentFile=``), which must not stop a command in an operator's shell. A token
        whose variable is not set here is left out (``$SHIPPER_API_TOKEN`` then serves).
        ``ConfigError`` when the file cannot be read, is not TOML, or its address is none."""
        from shipper.config import parse_address, read_toml
        from shipper.config.reader import interpolate_env
        from shipper.errors import ConfigProblem

        table = read_toml(path).get("api")
        if not isinstance(table, dict):
            return cls()
        address = table.get("address")
        try:
            if address is not None:
                address = str(parse_address(address))
        except ValueError as exc:
            raise ConfigError([ConfigProblem("api.address", str(exc))], path) from exc
        token = table.get("token")
        if isinstance(token, str):
            try:
                token = interpolate_env(token, os.environ if env is None else env) or None
            except (KeyError, ValueError):
                token = None  # not set in this environment (or no variable): the daemon's
        else:
            token = None
        return cls(address, isinstance(table.get("tls"), dict), token)


def locate(address: str | None, settings: ApiSettings | None, ca: str | None = None) -> Api | None:
    """The API to call: ``address`` (``--api``), else the config's ``[api] address``
    (``settings``); None when neither says one. The token and CA as the module docstring says."""
    settings = settings if settings is not None else ApiSettings()
    if address is None:
        if settings.address is None:
            return None
        address = settings.address
    token = settings.token or os.environ.get(TOKEN_ENV) or None
    return Api(base_url(address, settings.tls), token, ca or os.environ.get(CA_ENV) or None)


def required(address: str | None, config_path: str, ca: str | None = None) -> Api:
    """The API for a command that has nothing to do without it (``tap``, ``top``, ``reload``):
    ``locate`` with the ``[api]`` table of the config at ``config_path`` (``ApiSettings.read``;
    not needed with ``--api`` when there is no such file). ``ConfigError`` when that file or
    table is unusable; ``ApiError`` saying what to pass when no address can be told."""
    settings = None
    if address is None or Path(config_path).exists():
        settings = ApiSettings.read(config_path)
    api = locate(address, settings, ca)
    if api is None:
        raise ApiError(
            f"{config_path} has no [api] address: the daemon serves no API; pass --api ADDR"
        )
    configured = settings.address if settings is not None else None
    if address is None and configured is not None and configured.endswith(":0"):
        raise ApiError(
            f"{config_path}: [api] address {configured} lets the kernel choose the "
            "port; pass --api with the one the daemon logged (api_listening)"
        )
    return api
