"""Who looks at the pages: a bearer token kept in a cookie, and the defences of page writes.

The cookie holds the token itself (as a browser holds a password it was given): ``HttpOnly``
so no script reads it, ``SameSite=Strict`` so no other site's page sends it, ``Secure`` when
the page is served over TLS. Tokens never appear in a URL: sign-in is a POST. A page write also
needs (1) an ``Origin`` (or, lacking it, ``Referer``) of this very server when the browser sends
one, and (2) a CSRF token in the form: an HMAC of a fixed text keyed by the bearer token, which
a page of another site can neither read nor compute. Nothing of it lives in one process.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from aiohttp import web

from casd.auth import Token
from casd.errors import Forbidden, Unauthorized
from casd.http.context import TOKEN, core_of

COOKIE = "casd_token"
# The signed-in browser's token (None: not signed in), looked up once a request.
VIEWER: web.RequestKey[Token | None] = web.RequestKey("viewer")
_CSRF_MESSAGE = b"casd web form"
# A signed-in browser keeps its token this long without using it (then signs in again).
COOKIE_MAX_AGE = 7 * 24 * 3600


def cookie_secret(request: web.Request) -> str | None:
    secret = request.cookies.get(COOKIE, "").strip()
    return secret or None


async def viewer(request: web.Request) -> Token | None:
    """The token of the signed-in browser, None when it is not signed in (or its token was
    revoked). Handlers of the API read the same token through ``TOKEN`` of casd.http.context."""
    if VIEWER in request:
        return request[VIEWER]
    secret = cookie_secret(request)
    token = None
    if secret is not None:
        try:
            token = await core_of(request).tokens.authenticate(secret)
        except Unauthorized:
            token = None
    request[VIEWER] = token
    if token is not None:
        request[TOKEN] = token
    return token


def csrf_token(request: web.Request) -> str:
    """The form token of this browser's session; empty when it is not signed in."""
    secret = cookie_secret(request)
    if secret is None:
        return ""
    return hmac.new(secret.encode(), _CSRF_MESSAGE, hashlib.sha256).hexdigest()


def check_same_origin(request: web.Request) -> None:
    """Refuse a form posted from another site's page (when the browser says where from)."""
    source = request.headers.get("Origin")
    if source is None:
        source = request.headers.get("Referer")
        if source is None:
            return  # not a browser, or one that hides both: the CSRF token still decides
    parts = urlsplit(source)  # "null" (an opaque origin) matches no server
    if (parts.scheme, parts.netloc) != (request.scheme, request.host):
        raise Forbidden("this form was sent from another site's page")


def check_csrf(request: web.Request, submitted: str) -> None:
    expected = csrf_token(request)
    if not expected or not hmac.compare_digest(expected, submitted):
        raise Forbidden("the form is stale or was not sent from this server's page; reload it")


def set_token_cookie(request: web.Request, response: web.StreamResponse, secret: str) -> None:
    response.set_cookie(
        COOKIE,
        secret,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        secure=request.secure,
        samesite="Strict",
    )


def clear_token_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


def safe_next(target: str | None) -> str:
    """A place on this server to go to after signing in: a path, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
