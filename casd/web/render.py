"""Jinja2 templates (inside the package, autoescaped) and the response every page is sent in."""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

import jinja2
import markupsafe
from aiohttp import web

from casd.digests import hex_of
from casd.web.chart import human_bytes

# Pages load nothing from elsewhere and run no script: the policy says so to the browser too.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def short_digest(digest: str | None) -> str:
    if not digest:
        return ""
    return hex_of(digest)[:12]


def when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def figure(value: Any) -> str:
    """A number of a report as people read it: seconds to the hundredth."""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def inline_code(text: str | None) -> markupsafe.Markup:
    """Text of the API description with its `code` spans set as code, everything escaped."""
    parts = str(text or "").split("`")
    html = [
        markupsafe.Markup("<code>%s</code>") % part if index % 2 else markupsafe.escape(part)
        for index, part in enumerate(parts)
    ]
    return markupsafe.Markup("").join(html)


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("casd.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        enable_async=False,
    )
    env.filters.update(
        size=human_bytes,
        short=short_digest,
        when=when,
        json=pretty_json,
        compact=compact_json,
        figure=figure,
        code=inline_code,
    )
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page as HTML: rendering is CPU only (the data is fetched before)."""
    body = environment().get_template(template).render(request=request, **context)
    return web.Response(
        text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )
