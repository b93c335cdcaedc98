"""Resumable upload endpoints: ``/v1/uploads`` and ``/v1/uploads/{id}``.

Header names and values follow the IETF draft "Resumable Uploads for HTTP": ``Upload-Offset``,
``Upload-Length``, ``Upload-Complete`` (a structured boolean, ``?0``/``?1``); ``Casd-Digest``
names the digest the finished upload must have.
"""

from __future__ import annotations

from aiohttp import web

from casd.auth import Token, require_upload
from casd.blobs import Blob
from casd.digests import parse_digest
from casd.errors import InvalidRequest
from casd.http.blobs import (
    body_chunks,
    content_length,
    defer_expect,
    send_continue,
    stored_response,
)
from casd.http.context import core_of, request_token
from casd.uploads import Append, RequestBody, UploadStatus
from casd.wire import CASD_DIGEST, FALSE, TRUE, UPLOAD_COMPLETE, UPLOAD_LENGTH, UPLOAD_OFFSET


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/uploads", post_upload, expect_handler=defer_expect)
    app.router.add_get("/v1/uploads", list_uploads, allow_head=False)
    app.router.add_route("HEAD", "/v1/uploads/{upload_id}", head_upload)
    app.router.add_route(
        "PATCH", "/v1/uploads/{upload_id}", patch_upload, expect_handler=defer_expect
    )
    app.router.add_delete("/v1/uploads/{upload_id}", delete_upload)


def request_body(request: web.Request) -> RequestBody:
    async def accept() -> None:
        await send_continue(request)

    return RequestBody(
        chunks=body_chunks(request),
        size=content_length(request),
        interrupt=request.content.set_exception,
        accept=accept,
    )


def header_int(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) >= 2**63:
        raise InvalidRequest(f"{name} {raw[:40]!r} is not a non-negative 64-bit integer")
    return int(raw)


def upload_complete(request: web.Request) -> bool:
    """``Upload-Complete`` is a structured-field boolean; absent means more is to come."""
    raw = request.headers.get(UPLOAD_COMPLETE, FALSE).strip()
    if raw not in (FALSE, TRUE):
        raise InvalidRequest(f"{UPLOAD_COMPLETE} must be {FALSE} or {TRUE}, not {raw[:40]!r}")
    return raw == TRUE


async def append_request(request: web.Request, token: Token, *, offset: int) -> Append:
    digest = request.headers.get(CASD_DIGEST)
    return Append(
        offset=offset,
        complete=upload_complete(request),
        length=header_int(request, UPLOAD_LENGTH),
        digest=None if digest is None else parse_digest(digest.strip()),
        charge=await core_of(request).tokens.charge_for(token),
    )


def upload_id_of(request: web.Request) -> str:
    upload_id = request.match_info["upload_id"]
    if not upload_id.isalnum() or not upload_id.isascii() or len(upload_id) > 64:
        raise InvalidRequest(f"{upload_id[:70]!r} is not an upload id")
    return upload_id


def status_headers(status: UploadStatus) -> dict[str, str]:
    headers = {
        UPLOAD_OFFSET: str(status.offset),
        UPLOAD_COMPLETE: FALSE if status.completed is None else TRUE,
        "Cache-Control": "no-store",
    }
    if status.length is not None:
        headers[UPLOAD_LENGTH] = str(status.length)
    if status.completed is not None:
        headers["Location"] = f"/v1/blobs/{status.completed.digest}"
    return headers


def answer(outcome: UploadStatus | Blob, *, created: bool) -> web.Response:
    """201 with the blob when the upload is complete now, 200 with it when it was complete
    before this request, else the upload's offset."""
    if isinstance(outcome, Blob):
        return stored_response(outcome, created=True)
    if outcome.completed is not None:
        response = stored_response(outcome.completed, created=False)
        response.headers.update(status_headers(outcome))
        return response
    headers = status_headers(outcome)
    if created:
        headers["Location"] = f"/v1/uploads/{outcome.id}"
        return web.Response(status=201, headers=headers)
    return web.Response(status=204, headers=headers)


async def uploader(request: web.Request) -> Token:
    return require_upload(await request_token(request))


async def post_upload(request: web.Request) -> web.StreamResponse:
    token = await uploader(request)
    with core_of(request).upload_slots.hold(token.id):
        outcome = await core_of(request).uploads.create(
            token, await append_request(request, token, offset=0), request_body(request)
        )
    return answer(outcome, created=True)


async def head_upload(request: web.Request) -> web.StreamResponse:
    upload_id = upload_id_of(request)
    token = await uploader(request)
    status = await core_of(request).uploads.status(upload_id, token)
    return web.Response(status=204, headers=status_headers(status))


async def patch_upload(request: web.Request) -> web.StreamResponse:
    upload_id = upload_id_of(request)
    token = await uploader(request)
    offset = header_int(request, UPLOAD_OFFSET)
    if offset is None:
        raise InvalidRequest("PATCH needs Upload-Offset")
    with core_of(request).upload_slots.hold(token.id):
        outcome = await core_of(request).uploads.append(
            upload_id,
            token,
            await append_request(request, token, offset=offset),
            request_body(request),
        )
    return answer(outcome, created=False)


async def delete_upload(request: web.Request) -> web.StreamResponse:
    upload_id = upload_id_of(request)
    token = await uploader(request)
    await core_of(request).uploads.delete(upload_id, token)
    return web.Response(status=204)


async def list_uploads(request: web.Request) -> web.StreamResponse:
    token = await uploader(request)
    listed = await core_of(request).uploads.listing(token)
    body = {"uploads": [upload.as_dict() for upload in listed]}
    return web.json_response(body, headers={"Cache-Control": "no-store"})
