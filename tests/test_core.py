"""The composition root: one core opened once, served by several applications."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from casd.config import Settings
from casd.core import Core, open_core
from casd.database import migrate
from casd.digests import digest_of
from casd.http.app import create_app
from tests.conftest import create_database

pytestmark = pytest.mark.http


@pytest.fixture
async def core(postgres_url: str, tmp_path: Path) -> AsyncIterator[Core]:
    url = create_database(postgres_url)
    await migrate(url)
    async with open_core(Settings(data_dir=tmp_path), url, pool_size=4) as opened:
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
