from __future__ import annotations

import aiohttp

from tests.conftest import CasdServer
from tests.helpers import digest_of, put_blob


async def test_round_trip_small_blob(server: CasdServer, http: aiohttp.ClientSession) -> None:
    data = b"hello casd"
    status, body = await put_blob(http, server.url, server.admin_token, data)
    assert status == 201
    assert body == {"digest": digest_of(data), "size": len(data)}
    async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
        assert response.status == 200
        assert await response.read() == data
