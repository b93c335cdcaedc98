"""A structured (JSON lines) access log. It never records headers, so no token can leak."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from casd import metrics


def route_of(request: web.BaseRequest) -> str:
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:  # a request the HTTP parser refused never reached the router
        return "unmatched"
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    canonical: str | None = getattr(resource, "canonical", None)
    return canonical or "unmatched"


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_of(request)
        metrics.REQUESTS.labels(request.method, route, str(response.status)).inc()
        metrics.REQUEST_SECONDS.labels(request.method, route).observe(time)
        if not self.logger.isEnabledFor(20):
            return
        token = request.get("token")
        entry = {
            "remote": request.remote,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "seconds": round(time, 6),
            "actor": token.actor if token is not None else None,
        }
        self.logger.info(json.dumps(entry))
