"""The one place where errors become ``application/problem+json`` responses (RFC 9457): the
typed fields of an error become headers (:func:`problem_headers`) and members of the problem
body (:func:`problem_body`) here and nowhere else.

Most errors pass through :func:`problem_middleware`. Two kinds of answer never reach it and are
converted here too: those of aiohttp's HTTP parser (a malformed request line or header, a bad
Content-Length), which its request handler writes itself through ``handle_error``, and those of
a route's ``Expect`` handler, which runs before the middlewares.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web, web_protocol

from casd.errors import (
    BodyStalled,
    CasdError,
    ExpectationFailed,
    InvalidRequest,
    MethodNotAllowed,
    NameConflict,
    NamespaceQuotaExceeded,
    NotReady,
    PayloadTooLarge,
    RangeNotSatisfiable,
    RequestTimeout,
    RouteNotFound,
    Unauthorized,
    UnsupportedEncoding,
)
from casd.wire import PROBLEM_JSON, RETRY_AFTER, UPLOAD_OFFSET

log = logging.getLogger(__name__)


def problem_body(error: CasdError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
    }
    if isinstance(error, NameConflict):
        body["current"] = None if error.current is None else error.current.as_dict()
    if isinstance(error, NotReady):
        body["state"], body["checks"] = error.state, error.checks
    if isinstance(error, NamespaceQuotaExceeded):
        body["prefix"], body["quota_bytes"] = error.prefix, error.quota_bytes
        body["used_bytes"] = error.used_bytes
    return body


def problem_headers(error: CasdError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if error.offset is not None:
        headers[UPLOAD_OFFSET] = str(error.offset)
    if error.retry_after is not None:
        headers[RETRY_AFTER] = str(error.retry_after)
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"
    if isinstance(error, MethodNotAllowed) and error.allowed:
        headers["Allow"] = ",".join(error.allowed)  # as aiohttp writes it
    if isinstance(error, Unauthorized):
        # RFC 9110: a 401 names the authentication scheme it wants.
        headers["WWW-Authenticate"] = 'Bearer realm="casd"'
    if isinstance(error, UnsupportedEncoding):
        # RFC 9110 section 15.5.16: a 415 for a content coding says which codings are accepted.
        headers["Accept-Encoding"] = "identity"
    return headers


def problem_response(error: CasdError) -> web.Response:
    return web.Response(
        status=error.status,
        body=json.dumps(problem_body(error), default=str).encode(),
        content_type=PROBLEM_JSON,
        headers=problem_headers(error),
    )


def _from_http_exception(exc: web.HTTPException) -> CasdError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(allowed=tuple(sorted(exc.allowed_methods)))
    return _from_status(exc.status, exc.reason, exc.text or exc.reason)


def _from_status(status: int, reason: str, detail: str) -> CasdError:
    """The problem for an answer aiohttp made itself, by its status."""
    if status == 404:
        return RouteNotFound("no resource at this path")
    if status == 405:
        return MethodNotAllowed()
    if status == 413:
        return PayloadTooLarge()
    if status == 417:
        return ExpectationFailed()
    if status >= 500:
        return CasdError("an unexpected error occurred; see the server log")
    error = InvalidRequest(detail)
    error.status, error.title = status, reason
    return error


def refuse_encoded_body(request: web.Request) -> None:
    """casd stores bodies as they are sent: a ``Content-Encoding`` other than ``identity`` is
    refused before any byte of the body is read (and nothing is ever inflated: the server runs
    with aiohttp's ``auto_decompress`` off)."""
    for value in request.headers.getall("Content-Encoding", ()):
        for coding in value.split(","):
            if coding.strip().lower() not in ("", "identity"):
                raise UnsupportedEncoding(
                    f"Content-Encoding {coding.strip()[:40]!r} is not accepted; send the bytes"
                    " as they are to be stored (identity)"
                )


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        refuse_encoded_body(request)
        response: web.StreamResponse = await handler(request)
        return response
    except CasdError as error:
        return problem_response(error)
    except BodyStalled as error:
        return problem_response(RequestTimeout(f"{error}; the request was ended"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(CasdError("an unexpected error occurred; see the server log"))


async def problem_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an error answer aiohttp made itself on a matched route (the
    ``Expect`` handler runs before the middlewares) becomes problem+json before it is sent."""
    if response.status < 400 or not isinstance(response, web.Response):
        return
    if response.content_type in (PROBLEM_JSON, "text/html"):
        return  # already a problem, or an error page of casd.web for people
    error = _from_status(response.status, response.reason, response.text or response.reason)
    body = json.dumps(problem_body(error)).encode()
    response.body = body
    response.content_type = PROBLEM_JSON
    response.headers["Content-Length"] = str(len(body))


def _parser_error_answer(
    self: web_protocol.RequestHandler,
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """``RequestHandler.handle_error`` of casd: the same decisions as aiohttp's (close the
    connection; nothing if the response has started), a problem+json body instead of text."""
    if status >= 500:
        log.error("error handling a request from %s", request.remote, exc_info=exc)
    else:
        log.warning("refused a malformed request from %s: %s", request.remote, message or exc)
    if request.writer.output_size > 0:
        raise ConnectionError("the response has started; no error answer can follow")
    detail = (message or "the request is malformed")[:300]
    response = problem_response(_from_status(status, "Bad Request", detail))
    response.force_close()
    return response


def install_parser_problems() -> None:
    """Make the HTTP parser's answers (malformed requests) problem+json in this process.

    aiohttp offers no hook for them short of replacing the request handler class its runners
    instantiate, so casd replaces that class's ``handle_error`` (the one method that builds
    them) instead; whichever runner serves the application then answers with problem+json.
    """
    setattr(web_protocol.RequestHandler, "handle_error", _parser_error_answer)  # noqa: B010
