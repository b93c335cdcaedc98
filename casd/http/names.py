"""Name endpoints: ``/v1/names``, ``/v1/names/{name}`` and ``/v1/history/{name}``."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from aiohttp import web

from casd.auth import require_write
from casd.digests import parse_digest
from casd.errors import (
    InvalidDigest,
    InvalidName,
    InvalidRequest,
    PayloadTooLarge,
)
from casd.http.blobs import body_chunks, serve_blob
from casd.http.conditions import none_match, write_precondition
from casd.http.context import core_of, read_scope, request_token, require_reader
from casd.names import DEFAULT_PAGE, NameRecord, NameService, Precondition, validate_name
from casd.wire import CASD_DIGEST, CASD_NAME_VERSION, DIGEST_FORMAT, version_etag

# A name's body is a digest and a little metadata; nothing legitimate comes near this.
MAX_BODY = 256 * 1024
_NUMBER = re.compile(r"[0-9]{1,19}")
_BODY_MEMBERS = {"digest", "metadata"}
_PROMOTE_MEMBERS = {"source", "source_version", "metadata"}


# Any characters, line breaks too: a path that is not a valid name reaches the handler and is
# answered 400 invalid-name, not 404 "no resource" (``.`` would stop at a newline).
NAME_PATH = r"{name:[\s\S]+}"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/v1/names", list_names)
    # Before the name's own route, which would take '.../content' for part of the name.
    app.router.add_get(f"/v1/names/{NAME_PATH}/content", get_name_content)
    app.router.add_get(f"/v1/names/{NAME_PATH}", get_name)
    app.router.add_put(f"/v1/names/{NAME_PATH}", put_name)
    app.router.add_delete(f"/v1/names/{NAME_PATH}", delete_name)
    app.router.add_get(f"/v1/history/{NAME_PATH}", get_history)


def names_of(request: web.Request) -> NameService:
    return core_of(request).names


def record_response(record: NameRecord, status: int = 200) -> web.Response:
    headers = {"ETag": version_etag(record.version), "Cache-Control": "no-cache"}
    if status == 201:
        headers["Location"] = f"/v1/names/{record.name}"
    return web.json_response(record.as_dict(), status=status, headers=headers)


async def get_name(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    await require_reader(request, name)
    record = await names_of(request).get(name)
    if none_match(request, version_etag(record.version)):
        return web.Response(
            status=304, headers={"ETag": version_etag(record.version), "Cache-Control": "no-cache"}
        )
    return record_response(record)


async def get_name_content(request: web.Request) -> web.StreamResponse:
    """The blob a name points at, served like ``GET /v1/blobs/{digest}`` in one request."""
    name = validate_name(request.match_info["name"])
    await require_reader(request, name)
    record = await names_of(request).get(name)
    headers = {
        "Content-Location": f"/v1/blobs/{record.digest}",
        CASD_DIGEST: record.digest,
        CASD_NAME_VERSION: str(record.version),
        # The name may move on: caches revalidate, and the digest ETag makes that cheap.
        "Cache-Control": "no-cache",
    }
    return await serve_blob(request, record.digest, headers)


async def put_name(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    token = require_write(await request_token(request), name)
    expected = write_precondition(request, may_create=True)
    body = await read_json(request)
    if isinstance(body, dict) and "source" in body:
        return await promote(request, name, body, expected, token.actor)
    digest, metadata = parse_put_body(body)
    record, created = await names_of(request).put(name, digest, metadata, expected, token.actor)
    return record_response(record, status=201 if created else 200)


async def promote(
    request: web.Request, name: str, body: dict[str, Any], expected: Precondition, actor: str
) -> web.Response:
    """``{"source": NAME, "source_version": V, "metadata": {...}}``: copy a name, recording
    where it came from; the caller must be able to read the source."""
    source, version, metadata = parse_promote_body(body)
    await require_reader(request, source)
    record, created = await names_of(request).promote(
        name, source, version, metadata, expected, actor
    )
    return record_response(record, status=201 if created else 200)


async def delete_name(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    token = require_write(await request_token(request), name)
    expected = write_precondition(request, may_create=False)
    await names_of(request).delete(name, expected, token.actor, admin=token.is_admin)
    return web.Response(status=204)


async def list_names(request: web.Request) -> web.Response:
    scope = await read_scope(request)
    query = request.query
    records, following = await names_of(request).listing(
        prefix=query.get("prefix", ""),
        after=query.get("after", ""),
        limit=number_param(request, "limit") or DEFAULT_PAGE,
        readable=scope,
    )
    body = {"names": [record.as_dict() for record in records], "next": following}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


async def get_history(request: web.Request) -> web.Response:
    name = validate_name(request.match_info["name"])
    await require_reader(request, name)
    entries, following = await names_of(request).history(
        name,
        before=number_param(request, "before"),
        limit=number_param(request, "limit") or DEFAULT_PAGE,
    )
    body = {"history": [entry.as_dict() for entry in entries], "next": following}
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


def number_param(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    if not _NUMBER.fullmatch(raw):
        raise InvalidRequest(f"{key} must be a whole number, not {raw[:40]!r}")
    value = int(raw)
    if value == 0:
        raise InvalidRequest(f"{key} must be at least 1")
    return value


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON, at most :data:`MAX_BODY` bytes of it."""
    if (request.content_length or 0) > MAX_BODY:
        raise PayloadTooLarge(f"a name's body is at most {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in body_chunks(request):
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"a name's body is at most {MAX_BODY} bytes")
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:
        raise InvalidRequest(f"the body is not valid JSON: {str(error)[:200]}") from error


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


def parse_put_body(body: Any) -> tuple[str, dict[str, Any] | None]:
    """``(digest, metadata)`` of ``{"digest": ..., "metadata": {...}}``; metadata None if absent."""
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a JSON object: {"digest": ..., "metadata": {...}}')
    unknown = body.keys() - _BODY_MEMBERS
    if unknown:
        listed = ", ".join(repr(member[:40]) for member in sorted(unknown)[:5])
        raise InvalidRequest(f"unknown members {listed}; a name's body has digest and metadata")
    digest = body.get("digest")
    if not isinstance(digest, str):
        raise InvalidDigest(f"the body needs a 'digest': {DIGEST_FORMAT}")
    metadata = body.get("metadata")
    if "metadata" in body and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a JSON object")
    return parse_digest(digest), metadata


def parse_promote_body(body: dict[str, Any]) -> tuple[str, int | None, dict[str, Any] | None]:
    """``(source, source_version, metadata)`` of a promotion's body."""
    unknown = body.keys() - _PROMOTE_MEMBERS
    if unknown:
        listed = ", ".join(repr(member[:40]) for member in sorted(unknown)[:5])
        raise InvalidRequest(
            f"unknown members {listed}; a promotion has source, source_version and metadata"
        )
    source = body["source"]
    if not isinstance(source, str):
        raise InvalidName("source must be a name")
    version = body.get("source_version")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63
    ):
        raise InvalidRequest("source_version must be a positive whole number")
    metadata = body.get("metadata")
    if "metadata" in body and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a JSON object")
    return validate_name(source), version, metadata
