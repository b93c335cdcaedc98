"""The web pages for people: server-rendered HTML over the same services as the API.

Templates live in ``casd/web/templates`` (Jinja2, autoescaped), the one stylesheet in
``casd/web/static``; page queries in ``casd/sql/queries/web.sql``. No page runs a script.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from casd.http.names import NAME_PATH
from casd.web import pages
from casd.web.store import stop_refreshing

STATIC = Path(__file__).parent / "static"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", pages.browse)
    app.router.add_get(f"/names/{NAME_PATH}", pages.name_page)
    app.router.add_get("/blobs/{digest}", pages.blob_page)
    app.router.add_get("/ops", pages.ops_page)
    app.router.add_get("/api", pages.api_page)
    app.router.add_get("/download/{digest}", pages.download)
    app.router.add_get("/login", pages.login_form)
    app.router.add_post("/login", pages.login)
    app.router.add_post("/logout", pages.logout)
    app.router.add_post("/rollback", pages.rollback)
    app.router.add_static("/static", STATIC, append_version=False)
    app[pages.REFRESHING] = set()
    app.on_shutdown.append(_stop_refreshing)


async def _stop_refreshing(app: web.Application) -> None:
    await stop_refreshing(app[pages.REFRESHING])
