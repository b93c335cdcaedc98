"""The aiohttp application over a core: one error middleware, the access log, the routes."""

from __future__ import annotations

from aiohttp import web

from casd import web as pages
from casd.core import Core
from casd.http import accesslog, blobs, names, openapi, ops, policies, tokens, uploads
from casd.http.context import CORE
from casd.http.problems import install_parser_problems, problem_middleware, problem_on_prepare


def create_app(core: Core) -> web.Application:
    """The API and the pages over ``core``, which the caller opens and closes (see
    :func:`casd.core.open_core`); several applications may share one core. Whoever owns the
    core ends its upload writers when serving stops (``casd.server.serve_app`` does), else
    requests still writing wait out the shutdown timeout."""
    install_parser_problems()
    app = web.Application(
        middlewares=[accesslog.observe_middleware, problem_middleware],
        client_max_size=1024**2,
        # Bodies are stored as sent: never inflated (a Content-Encoding other than identity
        # is refused with 415 before the body is read).
        handler_args={"auto_decompress": False},
    )
    app[CORE] = core
    app.on_response_prepare.append(problem_on_prepare)
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    """Every route of the API and of the pages."""
    for module in (blobs, names, ops, policies, tokens, uploads, openapi, pages):
        module.setup_routes(app)
