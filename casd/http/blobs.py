"""Blob endpoints: ``/v1/blobs`` and ``/v1/blobs/{digest}``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from casd import metrics, wire
from casd.auth import require_upload
from casd.blobs import Blob, BlobInfo, Charge
from casd.digests import parse_digest
from casd.errors import CasdError, ExpectationFailed, InvalidRequest
from casd.http.bodies import watched_chunks
from casd.http.conditions import none_match
from casd.http.context import core_of, request_token, require_blob_reader
from casd.http.ranges import parse_range

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"


def setup_routes(app: web.Application) -> None:
    app.router.add_route("PUT", "/v1/blobs/{digest}", put_blob, expect_handler=defer_expect)
    app.router.add_route("POST", "/v1/blobs", post_blob, expect_handler=defer_expect)
    app.router.add_route("HEAD", "/v1/blobs/{digest}", head_blob)
    app.router.add_get("/v1/blobs/{digest}", get_blob, allow_head=False)


async def defer_expect(request: web.Request) -> None:
    """Answer ``Expect`` inside the handler, after auth and the existence check."""


async def send_continue(request: web.Request) -> None:
    expect = request.headers.get("Expect", "").strip()
    if not expect:  # an empty Expect expects nothing, as PUT has always read it
        return
    if expect.lower() != "100-continue":
        raise ExpectationFailed(f"cannot meet 'Expect: {expect}'")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def content_length(request: web.Request) -> int | None:
    raw = request.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidRequest(f"Content-Length {raw[:40]!r} is not a number")
    return int(raw)


def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body in the pieces that arrived; it ends with ``BodyStalled`` (408) when
    no byte arrives for ``CASD_BODY_TIMEOUT``."""
    return watched_chunks(request.content, core_of(request).settings.body_timeout)


def stored_response(blob: Blob, created: bool) -> web.Response:
    location = f"/v1/blobs/{blob.digest}"
    return web.json_response(
        wire.Blob.of(blob).to_json(),
        status=201 if created else 200,
        headers={"Location": location},
    )


async def upload_charge(request: web.Request) -> Charge:
    """The budget of the uploading token (401/403 for callers who may not upload)."""
    token = require_upload(await request_token(request))
    return await core_of(request).tokens.charge_for(token)


async def put_blob(request: web.Request) -> web.StreamResponse:
    digest = parse_digest(request.match_info["digest"])
    charge = await upload_charge(request)
    with core_of(request).upload_slots.hold(charge.token_id):
        return await _put_blob(request, digest, charge)


async def _put_blob(request: web.Request, digest: str, charge: Charge) -> web.StreamResponse:
    blobs = core_of(request).blobs
    size = content_length(request)
    blobs.check_announced_size(size)
    if request.headers.get("Expect"):
        # A file without a row (its publisher crashed) is adopted if it hashes to its name.
        info = await blobs.stored(digest) or await blobs.adopt_orphan(digest)
        if info is not None:
            # The client has not sent the body yet and need not: it is stored already.
            return stored_response(Blob(digest, info.size), created=False)
        await send_continue(request)
    elif charge.remaining is not None and await blobs.stored(digest) is not None:
        # Stored already, so free: a budget too small for the bytes does not refuse them (if
        # a collection removes the blob meanwhile, publishing charges and checks it then).
        charge = charge.unchecked_while_streaming()
    blob, created = await blobs.ingest(body_chunks(request), digest, size, charge)
    return stored_response(blob, created)


async def post_blob(request: web.Request) -> web.StreamResponse:
    charge = await upload_charge(request)
    blobs = core_of(request).blobs
    size = content_length(request)
    blobs.check_announced_size(size)
    charge.check(size)
    with core_of(request).upload_slots.hold(charge.token_id):
        await send_continue(request)
        blob, created = await blobs.ingest(body_chunks(request), None, size, charge)
    return stored_response(blob, created)


def blob_headers(info: BlobInfo) -> dict[str, str]:
    return {
        "ETag": f'"{info.digest}"',
        "Cache-Control": IMMUTABLE,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }


async def head_blob(request: web.Request) -> web.StreamResponse:
    digest = parse_digest(request.match_info["digest"])
    await require_blob_reader(request, digest, head=True)
    return await serve_blob(request, digest)


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = parse_digest(request.match_info["digest"])
    await require_blob_reader(request, digest, head=False)
    return await serve_blob(request, digest)


async def serve_blob(
    request: web.Request, digest: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Answer a GET or HEAD with a blob: verified full GET, ``Range``, ``If-None-Match``.
    ``headers`` are added to (or replace) the blob's own, for every answer but an error."""
    blobs = core_of(request).blobs
    extra = headers or {}
    unchanged = none_match(request, f'"{digest}"')
    if request.method == "HEAD" or unchanged:
        info = await blobs.readable(digest)  # no body: the stored size is checked, no more
        if unchanged:
            not_modified = {"ETag": f'"{digest}"', "Cache-Control": IMMUTABLE} | extra
            return web.Response(status=304, headers=not_modified)
        return web.Response(headers=blob_headers(info) | {"Content-Length": str(info.size)} | extra)
    info = await blobs.servable(digest)
    byte_range = parse_range(request.headers.get("Range"), info.size)
    response = web.StreamResponse(headers=blob_headers(info) | extra)
    start, end = 0, None  # the whole blob, verified as it goes (the blob service's policy)
    if byte_range is None:
        response.content_length = info.size
    else:
        start, end = byte_range
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        response.content_length = end - start
    # Opened and checked before any header goes out: a missing or resized blob is a clean error.
    async with blobs.open_for_reading(info, start, end) as chunks:
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
                metrics.BYTES_SENT.inc(len(chunk))
        except ConnectionError:
            raise  # the client left: no server error (logged as 499 by casd.http.accesslog)
        except (CasdError, OSError) as error:
            # Headers are gone already: cut the connection so the client sees a short transfer.
            # (An error answer written now would reach the client as more body bytes.)
            log.error("aborted GET of blob %s: %s", digest, error)
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response
