"""The composition root: one core opened once, served by several applications."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from casd.config import Settings
from casd.core import Core, open_core
from casd.digests import digest_of
from casd.http.app import create_app

pytestmark = pytest.mark.http


@pytest.fixture
async def core(database_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(Settings(data_dir=tmp_path), database_url, pool_size=4) as opened:
        yield opened


async def test_two_applications_serve_one_core(core: Core) -> None:
    secret = await core.tokens.create_admin_if_first()
    assert secret is not None
    auth = {"Authorization": f"Bearer {secret}"}
    data = b"stored through one surface, read through the other"
    digest = digest_of(data)
    first = TestClient(TestServer(create_app(core)))
    second = TestClient(TestServer(create_app(core)))
    await first.start_server()
    await second.start_server()
    try:
        async with first.put(f"/v1/blobs/{digest}", data=data, headers=auth) as response:
            assert response.status == 201
        await first.close()  # one surface stopping leaves the core to the other
        async with second.get(f"/v1/blobs/{digest}") as response:
            assert response.status == 200
            assert await response.read() == data
    finally:
        await first.close()
        await second.close()


async def test_one_surface_stopping_ends_no_upload_of_another(
    core: Core, database_url: str
) -> None:
    """A resumable upload writing through one application is not ended when another
    application over the same core shuts down (only the server that owns the core ends
    its writers: casd.server.serve_app)."""
    secret = await core.tokens.create_admin_if_first()
    auth = {"Authorization": f"Bearer {secret}"}
    data = os.urandom(256 * 1024)
    half = len(data) // 2
    first = TestClient(TestServer(create_app(core)))
    second = TestClient(TestServer(create_app(core)))
    await first.start_server()
    await second.start_server()
    rest_may_go = asyncio.Event()

    async def the_rest() -> AsyncIterator[bytes]:
        yield data[half : half + 1024]  # the client sends the headers with the first bytes
        await rest_may_go.wait()
        yield data[half + 1024 :]

    try:
        async with second.post("/v1/uploads", data=data[:half], headers=auth) as created:
            assert created.status == 201
            location = created.headers["Location"]
        headers = {**auth, "Upload-Offset": str(half), "Upload-Complete": "?1"}
        patch = asyncio.ensure_future(second.patch(location, data=the_rest(), headers=headers))
        await until_taken_over(database_url, location.rsplit("/", 1)[-1])
        await first.close()
        rest_may_go.set()
        async with await patch as answer:
            assert answer.status == 201, await answer.text()
            assert (await answer.json())["digest"] == digest_of(data)
    finally:
        await first.close()
        await second.close()


async def until_taken_over(database_url: str, upload_id: str) -> None:
    """Until a request holds the upload again (the creating one let it go)."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(1000):  # 20 s
            query = "SELECT writer_epoch FROM uploads WHERE id = $1"
            if await connection.fetchval(query, upload_id) is not None:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the PATCH never took the upload over")
    finally:
        await connection.close()
