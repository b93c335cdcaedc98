"""``GET /v1/openapi.json``: the OpenAPI 3.1 description kept in ``casd/openapi.yaml``."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web


def setup_routes(app: web.Application) -> None:
    _description_json()  # read and parse the file now, not in the event loop of a request
    app.router.add_get("/v1/openapi.json", openapi_json)


@functools.cache
def description() -> dict[str, Any]:
    """The description as a mapping, read once from the package."""
    text = (resources.files("casd") / "openapi.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


@functools.cache
def _description_json() -> bytes:
    return json.dumps(description(), indent=1).encode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(
        body=_description_json(),
        content_type="application/json",
        headers={"Cache-Control": "no-cache"},
    )
