"""The access log and the request metrics. The log never records headers, so no token leaks.

A request whose client closed the connection before the whole answer was sent is logged and
counted with status 499 (as nginx does): it is neither a server error nor a success.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from casd import metrics
from casd.http.context import TOKEN
from casd.logs import FIELDS

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
UPLOAD_METHODS = frozenset({"PUT", "POST", "PATCH"})
UPLOAD_PATHS = ("/v1/blobs", "/v1/uploads")


def route_of(request: web.BaseRequest) -> str:
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:  # a request the HTTP parser refused never reached the router
        return "unmatched"
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    canonical: str | None = getattr(resource, "canonical", None)
    return canonical or "unmatched"


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def observe_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Counts the uploads in flight; a request whose client went away ends quietly (no
    traceback: its access line says 499)."""
    try:
        if request.method in UPLOAD_METHODS and request.path.startswith(UPLOAD_PATHS):
            with metrics.UPLOADS_IN_FLIGHT.track_inprogress():
                response: web.StreamResponse = await handler(request)
                return response
        response = await handler(request)
        return response
    except ConnectionError as error:
        if not client_gone(request):
            raise
        log.debug(
            "%s %s: the client closed the connection (%s)", request.method, request.path, error
        )
        return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")


def _completed(response: web.StreamResponse) -> bool:
    """Whether the whole answer went out. aiohttp logs a request also when writing its answer
    failed because the connection was lost; only then is the end of the answer not sent."""
    return bool(getattr(response, "_eof_sent", True))


def _bytes_sent(response: web.StreamResponse, completed: bool) -> int:
    if completed:
        return response.body_length
    writer = getattr(response, "_payload_writer", None)
    return int(getattr(writer, "output_size", 0))


def _bytes_received(request: web.BaseRequest) -> int:
    try:
        return int(getattr(request.content, "total_bytes", 0))
    except (AssertionError, AttributeError):
        return 0


class AccessLogger(AbstractAccessLogger):
    """One line per answered request: JSON fields beside a short message, and the metrics."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_of(request)
        completed = _completed(response)
        status = response.status if completed else CLIENT_CLOSED_REQUEST
        received, sent = _bytes_received(request), _bytes_sent(response, completed)
        method = request.method
        metrics.REQUESTS.labels(method, route, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(method, route).observe(time)
        metrics.REQUEST_RECEIVED_BYTES.labels(method, route).observe(received)
        metrics.REQUEST_SENT_BYTES.labels(method, route).observe(sent)
        if not self.logger.isEnabledFor(logging.INFO):
            return
        token = request.get(TOKEN)
        fields = {
            "remote": request.remote,
            "method": method,
            "path": request.path,
            "route": route,
            "status": status,
            "bytes_received": received,
            "bytes_sent": sent,
            "seconds": round(time, 6),
            "actor": token.actor if token is not None else None,
        }
        self.logger.info(
            "%s %s %d (%d bytes in, %d out, %.3f s)",
            method,
            request.path,
            status,
            received,
            sent,
            time,
            extra={FIELDS: fields},
        )
