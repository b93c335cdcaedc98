"""Token endpoints: ``GET /v1/token`` tells callers what their own token may do."""

from __future__ import annotations

from aiohttp import web

from casd.auth import Token
from casd.errors import Unauthorized
from casd.http.context import request_token


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/token", get_own_token)


def token_record(token: Token) -> dict[str, object]:
    """A token as clients see it: never its secret."""
    return {
        "id": token.id,
        "label": token.label,
        "write_prefixes": list(token.write_prefixes),
        "admin": token.is_admin,
    }


async def get_own_token(request: web.Request) -> web.Response:
    token = await request_token(request)
    if token is None:
        raise Unauthorized("introspection needs a bearer token")
    return web.json_response(token_record(token))
