"""The S3 client of one casd process, and what S3's answers mean to casd.

Endpoint, region and credentials come from the standard AWS configuration (botocore reads it):
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``),
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and the shared config and
credentials files. An explicit endpoint (SeaweedFS, MinIO, Ceph RGW, Garage) gets path-style
addressing: such stores rarely have a wildcard DNS name per bucket.

The configuration is the design study's (``scale-out.md`` §5.7): no SigV4 payload signing (it
costs 0.85 CPU s per GiB and protects nothing that TLS and the checksum do not), CRC32 checksums
on every part (the store rejects a part damaged in transit, so it is re-sent instead of the blob
being quarantined later), standard retries, a connection pool sized for the concurrent
requests of a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from casd.errors import InsufficientStorage, Unavailable

if TYPE_CHECKING:  # the stubs are a development dependency
    from types_aiobotocore_s3 import S3Client

DEFAULT_REGION = "us-east-1"
POOL_CONNECTIONS = 64
CONNECT_TIMEOUT = 5.0
# A request that sends or receives nothing for this long fails (the client retries it, then
# casd answers 503): long enough for the store to assemble a large multipart upload.
READ_TIMEOUT = 60.0
RETRY_AFTER = 5  # seconds a client is told to wait when the store does not answer
# Answers that mean "the object is not there".
MISSING = {"NoSuchKey", "NotFound", "404", "NoSuchUpload"}
# Answers that mean "the store is out of room": 507, not 503.
FULL = {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull", "StorageFull"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}


def configured_endpoint(session: AioSession) -> str | None:
    """The endpoint URL the AWS configuration names for S3, None for AWS itself."""
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(variable):
            return os.environ[variable]
    endpoint = session.get_scoped_config().get("endpoint_url")
    return str(endpoint) if endpoint else None


def region_of(session: AioSession) -> str:
    """``AWS_REGION``, else botocore's own (``AWS_DEFAULT_REGION``, the profile), else
    us-east-1 (which every S3-compatible store accepts)."""
    return os.environ.get("AWS_REGION") or session.get_config_variable("region") or DEFAULT_REGION


def client_config(path_style: bool) -> AioConfig:
    s3: dict[str, Any] = {"payload_signing_enabled": False}
    if path_style:
        s3["addressing_style"] = "path"
    return AioConfig(
        s3=s3,
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=POOL_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )


@contextlib.asynccontextmanager
async def open_client() -> AsyncIterator[tuple[S3Client, str]]:
    """An S3 client from the AWS configuration, and the endpoint it talks to (for messages)."""
    session = get_session()
    try:
        endpoint = configured_endpoint(session)
        region = region_of(session)
    except BotoCoreError as error:  # a broken profile or config file
        raise Unavailable(f"S3 configuration: {error}") from error
    config = client_config(path_style=endpoint is not None)
    async with session.create_client(
        "s3", region_name=region, endpoint_url=endpoint, config=config
    ) as client:
        yield client, endpoint or f"AWS S3 ({region})"


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def status_of(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def is_precondition_failed(error: ClientError) -> bool:
    """The store refused a conditional write: the key exists (412), or another conditional
    write to it is in progress (409 ConditionalRequestConflict, AWS)."""
    return status_of(error) == 412 or error_code(error) in {
        "PreconditionFailed",
        "ConditionalRequestConflict",
    }


def is_missing(error: ClientError) -> bool:
    return error_code(error) in MISSING or status_of(error) == 404


def translate(error: BaseException, what: str) -> Exception:
    """casd's error for an S3 failure: FileNotFoundError for a missing object, 507 for a full
    store, 503 (with Retry-After) for everything else."""
    if isinstance(error, ClientError):
        code = error_code(error)
        if is_missing(error) and code != "NoSuchBucket":
            return FileNotFoundError(f"{what}: {code or 'not found'}")
        if code in FULL:
            return InsufficientStorage(f"the S3 store is full ({code}); nothing was stored")
        if code == "NoSuchBucket":
            detail = "the S3 bucket does not exist"
        elif code in DENIED or status_of(error) == 403:
            detail = f"the S3 store refused access ({code or 403}): check the credentials"
        else:
            detail = f"the S3 store answered {code or status_of(error)} to {what}"
        return Unavailable(detail, retry_after=RETRY_AFTER)
    return Unavailable(
        f"the S3 store does not answer ({what}: {type(error).__name__})",
        retry_after=RETRY_AFTER,
    )


# Every failure of the transport or of the store that aiobotocore lets through.
S3_FAILURES = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Translate S3 failures inside the block (see :func:`translate`)."""
    try:
        yield
    except (FileNotFoundError, FileExistsError):
        raise  # raised on purpose inside the block
    except S3_FAILURES as error:
        raise translate(error, what) from error
