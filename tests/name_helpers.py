"""Helpers for the tests of names and tokens: thin wrappers over real HTTP and the real CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp

from tests.conftest import AnyServer
from tests.helpers import digest_of


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_only() -> dict[str, str]:
    return {"If-None-Match": "*"}


def if_match(version: int) -> dict[str, str]:
    return {"If-Match": f'"{version}"'}


async def new_token(server: AnyServer, *prefixes: str, label: str = "") -> str:
    """A token made by ``casd token create``, the way an administrator makes one."""
    args = [arg for prefix in prefixes for arg in ("--write", prefix)]
    if label:
        args += ["--name", label]
    created = await asyncio.to_thread(server.run_cli, "token", "create", *args)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret and "\n" not in secret
    return secret


async def upload(http: aiohttp.ClientSession, server: AnyServer, token: str, data: bytes) -> str:
    digest = digest_of(data)
    async with http.put(
        f"{server.url}/v1/blobs/{digest}", data=data, headers=bearer(token)
    ) as response:
        assert response.status in (200, 201), await response.text()
    return digest


async def put_name(
    http: aiohttp.ClientSession,
    server: AnyServer,
    token: str,
    name: str,
    body: Any,
    condition: dict[str, str],
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """PUT a name; ``body`` is sent as JSON unless it is bytes. Returns status, body, headers."""
    headers = {**bearer(token), **condition}
    payload: dict[str, Any] = (
        {"data": body, "headers": {**headers, "Content-Type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body, "headers": headers}
    )
    async with http.put(f"{server.url}/v1/names/{name}", **payload) as response:
        return response.status, await response.json(content_type=None), response.headers


async def get_name(
    http: aiohttp.ClientSession, server: AnyServer, name: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = bearer(token) if token else {}
    async with http.get(f"{server.url}/v1/names/{name}", headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def history(
    http: aiohttp.ClientSession, server: AnyServer, name: str, **params: Any
) -> list[dict[str, Any]]:
    """Every history entry of a name, newest first, following the pages."""
    entries: list[dict[str, Any]] = []
    query = {key: str(value) for key, value in params.items()}
    while True:
        async with http.get(f"{server.url}/v1/history/{name}", params=query) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        entries += page["history"]
        if page["next"] is None:
            return entries
        query["before"] = str(page["next"])
