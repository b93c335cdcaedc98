"""Operations endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from casd import metrics
from casd.errors import Unavailable
from casd.http.context import services


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    context = services(request)
    try:
        await context.db.ping()
    except Unavailable as error:
        raise Unavailable(f"database: {error.detail}") from error
    await context.store.check()
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    context = services(request)
    settings = context.settings
    staging = {"staging": settings.staging_dir, "uploads": settings.uploads_dir}
    body = await metrics.render(context.db, staging)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
