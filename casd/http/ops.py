"""Operations endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from casd import metrics
from casd.errors import NotReady, Unavailable
from casd.http.context import core_of


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


STORE_FULL = "full: uploads are refused (507), reads still work"


async def readyz(request: web.Request) -> web.Response:
    """200 when the database answers and the blob store accepts writes; else 503 with what
    is wrong in ``checks`` (``state`` "degraded" when only the store's disk is full)."""
    context = core_of(request)
    checks = {"database": "ok", "blob_store": "ok"}
    try:
        await context.db.ping()
    except Unavailable as error:
        checks["database"] = error.detail
    try:
        if not (await context.store.check()).writable:
            checks["blob_store"] = STORE_FULL
    except Unavailable as error:
        checks["blob_store"] = error.detail
    if set(checks.values()) == {"ok"}:
        return web.json_response({"status": "ready", "checks": checks})
    degraded = checks == {"database": "ok", "blob_store": STORE_FULL}
    problems = "; ".join(f"{name}: {state}" for name, state in checks.items() if state != "ok")
    raise NotReady(problems, state="degraded" if degraded else "unavailable", checks=checks)


async def metrics_endpoint(request: web.Request) -> web.Response:
    context = core_of(request)
    settings = context.settings
    staging = {"staging": settings.staging_dir, "uploads": settings.uploads_dir}
    body = await metrics.render(context.db, staging)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
