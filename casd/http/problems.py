"""The one place where errors become ``application/problem+json`` responses (RFC 9457)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from casd.errors import (
    CasdError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_body(error: CasdError) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        **error.extra,
    }


def problem_response(error: CasdError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=error.status,
        body=json.dumps(problem_body(error), default=str).encode(),
        content_type=PROBLEM_JSON,
        headers=headers or {},
    )


def _from_http_exception(exc: web.HTTPException) -> CasdError:
    if exc.status == 404:
        return RouteNotFound("no resource at this path")
    if exc.status == 405:
        return MethodNotAllowed()
    if exc.status == 413:
        return PayloadTooLarge()
    error = InvalidRequest(exc.text or exc.reason)
    error.status, error.title = exc.status, exc.reason
    return error


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except CasdError as error:
        return problem_response(error, error.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(_from_http_exception(exc), headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(CasdError("an unexpected error occurred; see the server log"))
