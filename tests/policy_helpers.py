"""Helpers for the tests of tokens over HTTP, policies, quotas and retention."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import AnyServer
from tests.name_helpers import bearer


async def call(
    http: aiohttp.ClientSession,
    server: AnyServer,
    method: str,
    path: str,
    token: str | None = None,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One request; its status and JSON body (None when it has none)."""
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    async with http.request(method, f"{server.url}{path}", headers=headers, **kwargs) as response:
        text = await response.text()
        if response.status >= 400:
            assert response.content_type == "application/problem+json", text
        return response.status, (await response.json(content_type=None)) if text else None


async def mint(
    http: aiohttp.ClientSession, server: AnyServer, minter: str, **spec: Any
) -> dict[str, Any]:
    """A token minted over HTTP (its record, with the secret as ``token``)."""
    status, body = await call(http, server, "POST", "/v1/tokens", minter, json=spec)
    assert status == 201, body
    return dict(body)


async def set_policy(
    http: aiohttp.ClientSession, server: AnyServer, prefix: str, **policy: Any
) -> dict[str, Any]:
    status, body = await call(
        http, server, "PUT", f"/v1/policies/{prefix}", server.admin_token, json=policy
    )
    assert status in (200, 201), body
    return dict(body)


async def own_token(http: aiohttp.ClientSession, server: AnyServer, token: str) -> dict[str, Any]:
    status, body = await call(http, server, "GET", "/v1/token", token)
    assert status == 200, body
    return dict(body)


async def name_exists(http: aiohttp.ClientSession, server: AnyServer, name: str) -> bool:
    status, _ = await call(http, server, "GET", f"/v1/names/{name}", server.admin_token)
    assert status in (200, 404)
    return status == 200
