"""What handlers reach through the application: the core of this process, the caller's token."""

from __future__ import annotations

from aiohttp import web

from casd.auth import Token, parse_bearer, prefix_covers
from casd.core import Core
from casd.errors import Forbidden, Unauthorized

CORE = web.AppKey("core", Core)
# The caller's token once authenticated, for the handlers and the access log.
TOKEN = web.RequestKey("token", Token)


def core_of(request: web.Request) -> Core:
    return request.app[CORE]


async def request_token(request: web.Request) -> Token | None:
    """The caller's token, None if it sent none; a bad or revoked token is refused."""
    if TOKEN in request:
        return request[TOKEN]
    secret = parse_bearer(request.headers.get("Authorization"))
    if secret is None:
        return None
    token = await core_of(request).tokens.authenticate(secret)
    request[TOKEN] = token
    return token


async def require_reader(request: web.Request, name: str | None = None) -> None:
    """Reads are open unless the server runs with --private; then they need a token, and a
    token with read prefixes reads only the names under those and its write prefixes."""
    scope = await read_scope(request)
    if name is not None and scope is not None and not any(prefix_covers(p, name) for p in scope):
        raise Forbidden(f"this token may not read {name!r}")


async def read_scope(request: web.Request) -> tuple[str, ...] | None:
    """The prefixes the caller may read; None for every name."""
    if not core_of(request).settings.private:
        return None
    token = await request_token(request)
    if token is None:
        raise Unauthorized("this server is private: reads need a bearer token")
    return token.read_scope


async def require_blob_reader(request: web.Request, digest: str, *, head: bool) -> None:
    """A read-scoped token reads the blobs that a name it may read points at; any token that
    may upload may also ask whether a blob is stored (HEAD: it could learn it by uploading)."""
    scope = await read_scope(request)
    if scope is None:
        return
    token = await request_token(request)
    if head and token is not None and token.may_upload:
        return
    if not await core_of(request).db.fetchval("readable_name_for_digest", digest, list(scope)):
        raise Forbidden("no name this token may read points at this blob")
