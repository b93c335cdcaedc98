"""Conditional requests (RFC 9110 section 13): ``If-None-Match`` and ``If-Match`` are read here
and nowhere else."""

from __future__ import annotations

import re

from aiohttp import web

from casd.errors import InvalidRequest, PreconditionRequired
from casd.names import Precondition

# RFC 9110 entity tags as casd writes them for names: a version in quotes, maybe marked weak.
_VERSION_TAG = re.compile(r'(W/)?"([0-9]{1,19})"')


def joined(request: web.Request, header: str) -> str | None:
    """Every field of a header as one list (RFC 9110 section 5.3); None when it is absent."""
    values = request.headers.getall(header, [])
    return ", ".join(values) if values else None


def none_match(request: web.Request, etag: str) -> bool:
    """Whether ``If-None-Match`` is ``*`` or names ``etag`` (the weak comparison that RFC 9110
    asks for ``If-None-Match``): then a GET or HEAD is answered 304."""
    header = joined(request, "If-None-Match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def write_precondition(request: web.Request, *, may_create: bool) -> Precondition:
    """The precondition of a name's PUT (``If-None-Match: *`` or ``If-Match``) or DELETE
    (``If-Match``); a write without one is refused, so no client overwrites blindly."""
    if_match = joined(request, "If-Match")
    if_none_match = joined(request, "If-None-Match")
    if if_none_match is not None:
        if if_match is not None or not may_create or if_none_match.strip() != "*":
            raise InvalidRequest(
                "send 'If-None-Match: *' alone to create a name, or 'If-Match' to change one"
                if may_create
                else "a DELETE needs 'If-Match: \"<version>\"'"
            )
        return Precondition.create()
    if if_match is None:
        raise PreconditionRequired(
            "send 'If-None-Match: *' to create the name or 'If-Match: \"<version>\"' to change it"
            if may_create
            else "send 'If-Match: \"<version>\"' to delete the name"
        )
    return Precondition.match(parse_if_match(if_match))


def parse_if_match(header: str) -> frozenset[int] | None:
    """The versions an ``If-Match`` names; None for ``*`` (any version). Weak tags are
    accepted but never match: RFC 9110 demands the strong comparison for ``If-Match``."""
    if header.strip() == "*":
        return None
    versions = set()
    items = [item.strip() for item in header.split(",") if item.strip()]
    for item in items:
        match = _VERSION_TAG.fullmatch(item)
        if match is None:
            raise InvalidRequest(f"If-Match takes quoted versions like '\"3\"', not {item[:40]!r}")
        if not match.group(1):
            versions.add(int(match.group(2)))
    if not items:
        raise InvalidRequest("If-Match is empty")
    return frozenset(versions)
