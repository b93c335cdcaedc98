"""Token endpoints: ``/v1/token`` (the caller's own) and ``/v1/tokens`` (mint, list, revoke)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from casd.auth import TokenSpec, require_token
from casd.config import parse_duration
from casd.errors import InvalidRequest
from casd.http.context import core_of, request_token
from casd.http.names import read_json

_SPEC_MEMBERS = {"label", "write_prefixes", "read_prefixes", "rights", "expires_in", "quota_bytes"}
_RIGHTS = {"mint"}  # an admin token is one with the empty write prefix
MAX_LABEL = 200


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/token", own_token)
    app.router.add_get("/v1/tokens", list_tokens)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_delete("/v1/tokens/{token_id}", revoke_token)


async def own_token(request: web.Request) -> web.Response:
    token = require_token(await request_token(request), "GET /v1/token")
    fresh = await core_of(request).tokens.fresh(token)
    return web.json_response(fresh.as_dict(), headers={"Cache-Control": "no-store"})


async def list_tokens(request: web.Request) -> web.Response:
    token = require_token(await request_token(request), "listing tokens")
    tokens = await core_of(request).tokens.visible_to(token)
    body = {"tokens": [listed.as_dict() for listed in tokens]}
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def create_token(request: web.Request) -> web.Response:
    minter = require_token(await request_token(request), "minting a token")
    spec = parse_spec(await read_json(request))
    token, secret = await core_of(request).tokens.mint(minter, spec)
    return web.json_response(
        token.as_dict() | {"token": secret},
        status=201,
        headers={"Location": f"/v1/tokens/{token.id}", "Cache-Control": "no-store"},
    )


async def revoke_token(request: web.Request) -> web.Response:
    caller = require_token(await request_token(request), "revoking a token")
    raw = request.match_info["token_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"{raw[:40]!r} is not a token id")
    revoked = await core_of(request).tokens.revoke_as(caller, int(raw))
    return web.json_response({"revoked": revoked})


def parse_spec(body: Any) -> TokenSpec:
    """A token's spec from ``{"label", "write_prefixes", "read_prefixes", "rights",
    "expires_in", "quota_bytes"}``."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = body.keys() - _SPEC_MEMBERS
    if unknown:
        raise InvalidRequest(f"unknown members: {', '.join(sorted(unknown)[:5])}")
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > MAX_LABEL or not label.isprintable():
        raise InvalidRequest(f"label must be printable text of at most {MAX_LABEL} characters")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequest("label must be valid Unicode (no lone surrogates)") from error
    rights = _strings(body.get("rights", []), "rights")
    if not set(rights) <= _RIGHTS:
        raise InvalidRequest(f"rights are {sorted(_RIGHTS)}, not {sorted(set(rights) - _RIGHTS)}")
    read = body.get("read_prefixes")
    return TokenSpec(
        write_prefixes=tuple(_strings(body.get("write_prefixes", []), "write_prefixes")),
        label=label,
        read_prefixes=None if read is None else tuple(_strings(read, "read_prefixes")),
        mint="mint" in rights,
        expires_in=_expires_in(body.get("expires_in")),
        quota_bytes=_quota(body.get("quota_bytes")),
    )


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"{what} must be a list of strings")
    if len(value) > 100:
        raise InvalidRequest(f"{what} has at most 100 entries")
    return value


def _expires_in(value: Any) -> float | None:
    """Seconds (a number) or a duration ('8h', '30m'); None: never."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            raise InvalidRequest(str(error)) from error
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value  # not float() yet: an int too large for a float is too long, not a 500
    else:
        raise InvalidRequest("expires_in is a number of seconds or a duration like '8h'")
    if not 0 < seconds <= 100 * 365 * 86400:
        raise InvalidRequest("expires_in must be more than 0 and at most 100 years")
    return float(seconds)


def _quota(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidRequest("quota_bytes must be a whole number of bytes, at least 0")
    return value
