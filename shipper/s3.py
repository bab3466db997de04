"""The boundary to S3: a client on trio, and S3's errors translated into shipper's, once.

Everything that talks to S3 (the ``s3`` sink, ``shipper verify --s3``, ``validate
--check-remote``) opens its client here (``open_client``) and calls it inside ``translated``:
library exceptions never travel further than this module.

* The client is aiobotocore's, on its httpx backend, which runs on trio (its default aiohttp
  backend is asyncio-only). Credentials come from the settings when given (``${ENV}`` values in
  the config), else from the standard AWS chain (environment, shared files, container or
  instance role: the chain's metadata fetches go through the same trio-capable backend).
* Bodies go up as ``Body``: that backend iterates a plain ``bytes`` or ``BytesIO`` body line by
  line, which sends a compressed object as thousands of tiny writes; ``Body`` yields large chunks.
* Errors (``translated``): ``PreconditionFailed`` (412: a PUT with ``If-None-Match: *`` found the
  key taken) and ``NotFound`` (404 and its named kin) are answers, not failures, and have types of
  their own; 5xx, throttling, timeouts and connection errors are ``S3Unavailable`` (try again
  later); every other refusal (403, 400, a bucket that does not exist) is ``S3Rejected`` (the
  same request will never pass). Both carry S3's error code and HTTP status.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from shipper.config.values import Secret
from shipper.errors import DestinationRejected, DestinationUnavailable

#: How much of a body the HTTP client gets per write.
BODY_CHUNK: Final = 256 * 1024
#: Error codes that mean "slow down" or "not now", whatever their status.
_RETRY_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES: Final = frozenset(
    {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"}
)


class S3Unavailable(DestinationUnavailable):
    """S3 could not answer now (a 5xx, throttling, a timeout, no connection): try again later."""

    def __init__(self, message: str, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class S3Rejected(DestinationRejected):
    """S3 refused the request for good (403, 400, ...): the same request will never pass."""

    def __init__(self, message: str, code: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class PreconditionFailed(S3Rejected):
    """412: a PUT with ``If-None-Match: *`` found its key already taken."""


class NotFound(S3Rejected):
    """404: no such key, version or bucket (``code`` says which)."""


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and who we are: ``endpoint`` (None: AWS itself), ``region``, and keys
    (None: the standard AWS credential chain)."""

    region: str = "us-east-1"
    endpoint: str | None = None
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None

    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.endpoint or f"AWS S3 ({self.region})"


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/prefix``, parsed: the bucket, and the key prefix ("" or ending in ``/``)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        """Raises ValueError saying what was expected."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(parts.netloc, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class Body(io.BytesIO):
    """A request body the httpx backend sends in ``BODY_CHUNK`` pieces (a ``BytesIO`` is
    iterated by lines otherwise: a compressed body has a "line" every few hundred bytes)."""

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(BODY_CHUNK):
            yield chunk


#: botocore's loader of service models, shared by every client of the process (``open_client``).
_loader: Any = None


@asynccontextmanager
async def open_client(settings: S3Settings) -> AsyncIterator[Any]:
    """An S3 client for ``settings``, on trio; its calls belong inside ``translated``."""
    from aiobotocore.config import AioConfig
    from aiobotocore.httpxsession import HttpxSession
    from aiobotocore.session import get_session

    keys: dict[str, str] = {}
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        keys["aws_access_key_id"] = settings.access_key_id.reveal()
        keys["aws_secret_access_key"] = settings.secret_access_key.reveal()
        if settings.session_token is not None:
            keys["aws_session_token"] = settings.session_token.reveal()
    config = AioConfig(
        http_session_cls=HttpxSession,
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 1},  # the sink driver retries, with its own backoff
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = get_session()
    # As the session's default, the backend also picks the credential chain's trio-capable
    # fetchers (instance role, container credentials); given to one client only, the chain
    # would fetch them with the asyncio-only library.
    session.set_default_client_config(config)
    global _loader
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:  # the service model, parsed once per process (a new session parses it again)
        session.register_component("data_loader", _loader)
    with translated(f"connecting to {settings.where}"):
        async with session.create_client(
            "s3", region_name=settings.region, endpoint_url=settings.endpoint, **keys
        ) as client:
            yield client


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """Translate what the S3 library raises inside into shipper's errors (see the module
    docstring); ``doing`` says what was being done, for the message."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"{doing}: {code or 'error'} ({status}): {error.get('Message', '') or exc}"
        if status == 412 or code == "PreconditionFailed":
            raise PreconditionFailed(message, code, status) from exc
        if status == 404 or code in _NOT_FOUND_CODES:
            raise NotFound(message, code, status) from exc
        if code in _RETRY_CODES or status is None or status >= 500 or status in (408, 429):
            raise S3Unavailable(message, code, status) from exc
        raise S3Rejected(message, code, status) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise S3Rejected(f"{doing}: no usable credentials: {exc}", "NoCredentials") from exc
    except (ConnectionError, HTTPClientError, ReadTimeoutError) as exc:
        raise S3Unavailable(f"{doing}: {exc}", type(exc).__name__) from exc
    except BotoCoreError as exc:
        raise S3Unavailable(f"{doing}: {exc}", type(exc).__name__) from exc
    except OSError as exc:  # a socket error the backend let through
        raise S3Unavailable(f"{doing}: {exc.strerror or exc}", type(exc).__name__) from exc
