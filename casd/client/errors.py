"""The failures of the client: the typed error of an answer (by its problem's code, read
through the classes of :mod:`casd.errors` and the table of :mod:`casd.wire`, so the client
reads a code as the server means it), and those that are the client's own."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import aiohttp

from casd import errors, wire
from casd.errors import (
    BlobNotFound,
    BlobQuarantined,
    CasdError,
    Forbidden,
    InvalidRequest,
    MismatchingUploadOffset,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)

# Answers worth retrying though they are 4xx: the server timed out waiting, or asks to slow down.
RETRYABLE_4XX = (408, 429)
# Transport failures: the request may not have reached the server, or its answer was lost.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class LocalFileError(CasdError):
    """Reading or writing a local file (or stdout) failed: never the server's fault."""

    code, title = "local-file-error", "Local file error"


class TlsFailure(Unavailable):
    """TLS failed (a certificate, or https spoken to a plain HTTP port): never retried."""


class UnexpectedAnswer(CasdError):
    """The server's answer is not what the API defines (a member it must have is missing)."""

    code, title = "unexpected-answer", "Unexpected answer"


_BY_CODE: dict[str, type[CasdError]] = {}
_STATUS_ERRORS: dict[int, type[CasdError]] = {
    401: Unauthorized,
    403: Forbidden,
    409: MismatchingUploadOffset,
    410: BlobQuarantined,
    413: PayloadTooLarge,
}


def error_class(code: str) -> type[CasdError]:
    """The error class of a problem's code (:class:`CasdError` for a code it does not know: a
    newer server's), found among the classes of :mod:`casd.errors` that declare a code of the
    wire table, so that the client's reading of a code is the server's."""
    if not _BY_CODE:
        pending: list[type[CasdError]] = [CasdError]
        while pending:
            kind = pending.pop()
            pending += kind.__subclasses__()
            if kind.__module__ == errors.__name__ and "code" in kind.__dict__:
                _BY_CODE.setdefault(kind.code, kind)
    return _BY_CODE.get(code, CasdError)


def error_from_problem(
    status: int, body: Any, headers: dict[str, str], not_found: type[CasdError] = BlobNotFound
) -> CasdError:
    """The typed error for an error answer; one without a problem body (an answer to HEAD, a
    proxy's page) is typed by its status, ``not_found`` for 404."""
    kind: type[CasdError]
    error: CasdError
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        text = str(body)[:200] if body else ""
        kind = {404: not_found, **_STATUS_ERRORS}.get(status, InvalidRequest)
        if status >= 500 or status in RETRYABLE_4XX:
            kind = Unavailable
        error = kind(f"HTTP {status} {text}".strip())
    else:
        # 408 and 429 (request-timeout, too-many-uploads) may succeed later: retried.
        kind = Unavailable if status in RETRYABLE_4XX else error_class(body["code"])
        error = kind(str(body.get("detail") or ""))
        error.extra = {key: value for key, value in body.items() if key not in wire.PROBLEM_MEMBERS}
        error.code = body["code"]
    error.status = status
    error.offset = _header_int(headers, wire.UPLOAD_OFFSET)
    error.retry_after = _header_int(headers, wire.RETRY_AFTER)
    return error


def _header_int(headers: dict[str, str], name: str) -> int | None:
    raw = headers.get(name, "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None


async def raise_for_problem(
    response: aiohttp.ClientResponse, not_found: type[CasdError] = BlobNotFound
) -> None:
    """Raise the typed error of an error answer."""
    text = await response.text(errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    raise error_from_problem(response.status, body, dict(response.headers), not_found)


def unreachable(url: str, error: BaseException) -> Unavailable:
    kind = TlsFailure if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError) else Unavailable
    return kind(f"cannot talk to casd at {url}: {type(error).__name__}: {error}".strip())


def offset_header(error: CasdError) -> int | None:
    return error.offset
