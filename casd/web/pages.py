"""The handlers of the pages: read through the services and the page store, then render."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from casd.auth import Token, prefix_covers, require_write
from casd.digests import parse_digest
from casd.errors import (
    BlobNotFound,
    CasdError,
    Forbidden,
    InvalidRequest,
    NameNotFound,
    Unauthorized,
)
from casd.http import blobs as blob_api
from casd.http.context import core_of, read_scope, require_blob_reader, require_reader
from casd.http.openapi import description
from casd.names import NameRecord, Precondition, validate_name
from casd.web import session
from casd.web.apidoc import operations, schema_text
from casd.web.chart import stored_bytes_chart
from casd.web.history import changes
from casd.web.render import render
from casd.web.store import PageStore

# The background recomputations of the store's figures that this application started.
REFRESHING = web.AppKey("refreshing", set[asyncio.Task[None]])
HISTORY_PAGE = 50
SEARCH_PAGE = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page(handler: Handler) -> Handler:
    """Errors of a page are shown as a page (the API answers problem+json instead)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CasdError as error:
            return await error_page(request, error)

    return wrapped


async def error_page(request: web.Request, error: CasdError) -> web.Response:
    context = await common(request, require=False)
    return render(request, "error.html", status=error.status, error=error, **context)


async def common(request: web.Request, *, require: bool = True) -> dict[str, Any]:
    """What every page shows in its header; on a private server, no page without a token."""
    viewer = await session.viewer(request)
    private = core_of(request).settings.private
    if require and private and viewer is None:
        raise web.HTTPSeeOther(f"/login?next={_quoted(request.path_qs)}")
    return {"viewer": viewer, "private": private, "csrf": session.csrf_token(request)}


def _quoted(text: str) -> str:
    return quote(text, safe="")


def store(request: web.Request) -> PageStore:
    return PageStore(core_of(request).db, request.app[REFRESHING])


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def breadcrumbs(folder: str) -> list[tuple[str, str]]:
    """``(label, folder)`` from the root to ``folder``."""
    crumbs, path = [("/", "")], ""
    for segment in [part for part in folder.split("/") if part]:
        path += segment + "/"
        crumbs.append((segment + "/", path))
    return crumbs


@page
async def browse(request: web.Request) -> web.StreamResponse:
    context = await common(request)
    prefix = request.query.get("prefix", "").lstrip("/")
    after = request.query.get("after", "")
    scope = await read_scope(request)
    if prefix == "" or prefix.endswith("/"):
        folder = await store(request).folder(prefix, after, readable=scope)
        return render(
            request,
            "browse.html",
            folder=folder,
            prefix=prefix,
            after=after,
            crumbs=breadcrumbs(prefix),
            **context,
        )
    records, following = await core_of(request).names.listing(
        prefix=prefix, after=after, limit=SEARCH_PAGE, readable=scope
    )
    folder_of_prefix = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    return render(
        request,
        "search.html",
        records=records,
        following=following,
        prefix=prefix,
        after=after,
        crumbs=breadcrumbs(folder_of_prefix),
        **context,
    )


@page
async def name_page(request: web.Request) -> web.StreamResponse:
    context = await common(request)
    name = validate_name(request.match_info["name"])
    await require_reader(request, name)
    before = _version_param(request, "before")
    names = core_of(request).names
    record: NameRecord | None
    try:
        record = await names.get(name)
    except NameNotFound:
        record = None
    entries, _ = await names.history(name, before=before, limit=HISTORY_PAGE + 1)
    shown = entries[:HISTORY_PAGE]
    older = entries[HISTORY_PAGE] if len(entries) > HISTORY_PAGE else None
    viewer: Token | None = context["viewer"]
    return render(
        request,
        "name.html",
        name=name,
        record=record,
        changes=changes(shown, older),
        next_before=shown[-1].version if older is not None else None,
        before=before,
        may_write=viewer is not None and viewer.may_write(name),
        crumbs=breadcrumbs(name.rsplit("/", 1)[0] + "/" if "/" in name else ""),
        base=base_url(request),
        filename=name.rsplit("/", 1)[-1],
        done=request.query.get("done") == "rollback",
        **context,
    )


def _version_param(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise InvalidRequest(f"{key} must be a version, a whole number from 1")
    return int(raw)


@page
async def blob_page(request: web.Request) -> web.StreamResponse:
    context = await common(request)
    digest = parse_digest(request.match_info["digest"])
    await require_blob_reader(request, digest, head=False)
    pages = store(request)
    blob = await pages.blob(digest)
    names, history = await pages.blob_references(digest)
    scope = await read_scope(request)
    if scope is not None:
        names = [row for row in names if _covered(scope, row["name"])]
        history = [row for row in history if _covered(scope, row["name"])]
    if blob is None and not history:
        raise BlobNotFound(f"no blob {digest} is stored or was ever named")
    return render(
        request,
        "blob.html",
        digest=digest,
        blob=blob,
        names=names,
        history=history,
        base=base_url(request),
        **context,
    )


def _covered(scope: tuple[str, ...], name: str) -> bool:
    return any(prefix_covers(prefix, name) for prefix in scope)


@page
async def ops_page(request: web.Request) -> web.StreamResponse:
    context = await common(request)
    if await read_scope(request) is not None:
        raise Forbidden(
            "the operations page shows the whole store: it needs a token that reads every name"
        )
    pages = store(request)
    uploads, upload_count = await pages.uploads()
    figures = await pages.figures()
    viewer: Token | None = context["viewer"]
    return render(
        request,
        "ops.html",
        figures=figures,
        unhealthy=await pages.unhealthy_totals(),
        uploads=uploads,
        upload_count=upload_count,
        owner_sees=lambda upload: (
            viewer is not None and ("" in viewer.write_prefixes or viewer.id == upload.token_id)
        ),
        runs=await pages.last_runs(),
        chart=stored_bytes_chart(figures.points),
        settings=core_of(request).settings,
        **context,
    )


@page
async def api_page(request: web.Request) -> web.StreamResponse:
    context = await common(request, require=False)
    api = description()
    return render(
        request, "api.html", api=api, ops=operations(api), schema_text=schema_text, **context
    )


@page
async def download(request: web.Request) -> web.StreamResponse:
    """A blob's bytes for the signed-in browser (the API itself reads only bearer headers)."""
    await common(request)
    return await blob_api.get_blob(request)


@page
async def login_form(request: web.Request) -> web.StreamResponse:
    context = await common(request, require=False)
    target = session.safe_next(request.query.get("next"))
    return render(request, "login.html", target=target, failed=None, **context)


@page
async def login(request: web.Request) -> web.StreamResponse:
    session.check_same_origin(request)
    form = await request.post()
    secret = str(form.get("token", "")).strip()
    target = session.safe_next(str(form.get("next", "/")))
    try:
        if not secret:
            raise Unauthorized("paste a token to sign in")
        await core_of(request).tokens.authenticate(secret)
    except Unauthorized as error:
        context = await common(request, require=False)
        return render(
            request, "login.html", status=401, target=target, failed=error.detail, **context
        )
    response = web.HTTPSeeOther(target)
    session.set_token_cookie(request, response, secret)
    raise response


@page
async def logout(request: web.Request) -> web.StreamResponse:
    session.check_same_origin(request)
    form = await request.post()
    session.check_csrf(request, str(form.get("csrf", "")))
    response = web.HTTPSeeOther("/")
    session.clear_token_cookie(response)
    raise response


@page
async def rollback(request: web.Request) -> web.StreamResponse:
    """Point a name back at the digest and metadata of an earlier version, if the name is still
    at the version the page showed (the compare-and-swap of ``PUT /v1/names``)."""
    session.check_same_origin(request)
    form = await request.post()
    token = await session.viewer(request)
    if token is None:
        raise Unauthorized("sign in with a token that may write this name")
    session.check_csrf(request, str(form.get("csrf", "")))
    name = validate_name(str(form.get("name", "")))
    version = _form_version(str(form.get("version", "")))
    expected_raw = str(form.get("expected", ""))
    expected = (
        Precondition.create()
        if expected_raw == ""
        else Precondition.match(frozenset({_form_version(expected_raw)}))
    )
    require_write(token, name)
    names = core_of(request).names
    entries, _ = await names.history(name, before=version + 1, limit=1)
    earlier = entries[0] if entries and entries[0].version == version else None
    if earlier is None or earlier.digest is None:
        raise InvalidRequest(f"version {version} of {name!r} pointed at no blob")
    await names.put(name, earlier.digest, earlier.metadata or {}, expected, token.actor)
    raise web.HTTPSeeOther(f"/names/{name}?done=rollback")


def _form_version(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise InvalidRequest("a version is a whole number from 1")
    return int(raw)
