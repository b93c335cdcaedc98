"""What handlers reach through the application: the services of this process."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from casd.auth import Token, TokenStore, parse_bearer
from casd.blobs import BlobService
from casd.blobstore import BlobStore
from casd.config import Settings
from casd.database import Database
from casd.errors import Unauthorized


@dataclass
class Services:
    settings: Settings
    db: Database
    store: BlobStore
    blobs: BlobService
    tokens: TokenStore


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def request_token(request: web.Request) -> Token | None:
    """The caller's token, None if it sent none; a bad or revoked token is refused."""
    cached: Token | None = request.get("token")
    if cached is not None:
        return cached
    secret = parse_bearer(request.headers.get("Authorization"))
    if secret is None:
        return None
    token = await services(request).tokens.authenticate(secret)
    request["token"] = token
    return token


async def require_reader(request: web.Request) -> None:
    """Reads are open unless the server runs with --private."""
    if services(request).settings.private and await request_token(request) is None:
        raise Unauthorized("this server is private: reads need a bearer token")
