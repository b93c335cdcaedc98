"""The aiohttp application: resources opened and closed with it, one error middleware, routes."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator

from aiohttp import web

from casd import web as pages
from casd.auth import TokenStore
from casd.blobs import BlobService
from casd.blobstore import LocalBlobStore
from casd.config import Settings
from casd.database import Database
from casd.http import accesslog, blobs, names, openapi, ops, policies, tokens, uploads
from casd.http.bodies import UploadSlots
from casd.http.context import SERVICES, Services
from casd.http.problems import install_parser_problems, problem_middleware, problem_on_prepare
from casd.maintenance import periodic_retention, periodic_scrub

# Blob I/O and fsync run in threads; many concurrent uploads each wait on one fsync.
IO_THREADS = 64


def create_app(settings: Settings, database_url: str) -> web.Application:
    install_parser_problems()
    app = web.Application(
        middlewares=[accesslog.observe_middleware, problem_middleware],
        client_max_size=1024**2,
        # Bodies are stored as sent: never inflated (a Content-Encoding other than identity
        # is refused with 415 before the body is read).
        handler_args={"auto_decompress": False},
    )
    app.on_response_prepare.append(problem_on_prepare)

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(IO_THREADS, "casd-io"))
        db = await Database.connect(
            database_url, max_size=settings.db_pool_size, wait_limit=settings.db_timeout
        )
        store = LocalBlobStore(settings.blobs_dir, settings.staging_dir, settings.quarantine_dir)
        app[SERVICES] = Services(
            settings=settings,
            db=db,
            store=store,
            blobs=BlobService(db, store, settings.max_blob_size),
            tokens=TokenStore(db),
            upload_slots=UploadSlots(settings.max_uploads_per_token),
        )
        await app[SERVICES].tokens.watch_revocations(database_url)
        yield
        await app[SERVICES].tokens.close()
        await db.close()

    app.cleanup_ctx.append(services_ctx)
    if settings.scrub_interval:
        app.cleanup_ctx.append(periodic_scrub_ctx)
    if settings.retention_interval:
        app.cleanup_ctx.append(periodic_retention_ctx)
    for module in (blobs, names, ops, policies, tokens, uploads, openapi, pages):
        module.setup_routes(app)
    return app


async def periodic_scrub_ctx(app: web.Application) -> AsyncIterator[None]:
    """CASD_SCRUB_INTERVAL: scrub in the background while serving."""
    async with periodic_scrub(app[SERVICES].blobs, app[SERVICES].settings):
        yield


async def periodic_retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """CASD_RETENTION_INTERVAL: apply the retention policies in the background while serving."""
    async with periodic_retention(app[SERVICES].db, app[SERVICES].settings):
        yield
