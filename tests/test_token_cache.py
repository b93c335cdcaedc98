"""Servers remember tokens that authenticated, briefly; a revocation by any process still takes
effect at once in every worker of every server."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import HttpServerFactory
from tests.helpers import digest_of
from tests.name_helpers import bearer, new_token

REQUESTS = 24  # over fresh connections, so that both workers serve some


async def upload_statuses(http: aiohttp.ClientSession, url: str, secret: str) -> list[int]:
    statuses = []
    for index in range(REQUESTS):
        data = f"token cache {index}".encode()
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh,
            fresh.put(
                f"{url}/v1/blobs/{digest_of(data)}", data=data, headers=bearer(secret)
            ) as response,
        ):
            statuses.append(response.status)
    return statuses


async def test_revoked_token_is_refused_at_once_by_every_worker(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory("--workers", "2")
    secret = await new_token(server, "cache")
    assert set(await upload_statuses(http, server.url, secret)) <= {200, 201}
    listing: list[dict[str, Any]] = json.loads(server.run_cli("token", "list", "--json").stdout)
    token_id = max(row["id"] for row in listing)
    assert server.run_cli("token", "revoke", str(token_id)).returncode == 0
    assert set(await upload_statuses(http, server.url, secret)) == {401}
