"""Verify on read: a full GET hashes what it sends; rot is never handed out complete, the blob is
quarantined (410), names pointing at it report it, and it cannot be newly named."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from tests.conftest import AnyServer
from tests.helpers import blob_path, digest_of, problem_of
from tests.inprocess import InProcessServer
from tests.integrity_helpers import (
    blob_rows,
    flip_byte,
    full_get,
    metric_samples,
    quarantined_files,
    stored_blob,
    upload,
)
from tests.name_helpers import create_only, get_name, if_match, put_name

MiB = 1024 * 1024


async def assert_quarantined(http: aiohttp.ClientSession, server: AnyServer, digest: str) -> None:
    url = f"{server.url}/v1/blobs/{digest}"
    async with http.get(url) as response:
        assert response.status == 410
        assert (await problem_of(response))["code"] == "blob-quarantined"
    async with http.head(url) as response:
        assert response.status == 410
    assert not blob_path(server.data_dir, digest).exists()
    assert len(quarantined_files(server, digest)) == 1
    assert (await blob_rows(server))[digest] == "quarantined"


@pytest.mark.parametrize(
    ("size", "where"),
    [
        (1000, 500),  # one chunk: nothing at all is sent
        (3 * MiB + 5, MiB + 17),  # an early chunk: sent before the damage is known
        (3 * MiB + 5, 3 * MiB + 2),  # the last chunk, held back until the hash is known
        (4 * MiB, 0),
    ],
)
async def test_corrupt_blob_is_never_sent_complete(
    module_http_server: InProcessServer, http: aiohttp.ClientSession, size: int, where: int
) -> None:
    data = await stored_blob(http, module_http_server, size)
    digest = digest_of(data)
    flip_byte(blob_path(module_http_server.data_dir, digest), where)

    status, received = await full_get(http, f"{module_http_server.url}/v1/blobs/{digest}")

    assert status is None, "the client must see a broken transfer"
    assert len(received) < size
    await assert_quarantined(http, module_http_server, digest)


async def test_many_readers_of_a_corrupt_blob(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = await stored_blob(http, module_http_server, 5 * MiB)
    digest = digest_of(data)
    flip_byte(blob_path(module_http_server.data_dir, digest), 2 * MiB)
    before = await metric_samples(http, module_http_server)

    url = f"{module_http_server.url}/v1/blobs/{digest}"
    outcomes = await asyncio.gather(*(full_get(http, url) for _ in range(12)))

    for status, received in outcomes:
        assert status in (None, 410), "nobody gets the damaged blob complete"
        assert status is not None or len(received) < len(data)
    await assert_quarantined(http, module_http_server, digest)
    after = await metric_samples(http, module_http_server)
    counter = "casd_blobs_quarantined_total"
    assert after[counter] - before.get(counter, 0) == 1, "quarantined exactly once"


async def test_reupload_heals_a_quarantined_blob(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = await stored_blob(http, module_http_server, 2 * MiB + 3)
    digest = digest_of(data)
    flip_byte(blob_path(module_http_server.data_dir, digest), 7)
    assert (await full_get(http, f"{module_http_server.url}/v1/blobs/{digest}"))[0] is None
    await assert_quarantined(http, module_http_server, digest)

    await upload(http, module_http_server, data)

    assert await full_get(http, f"{module_http_server.url}/v1/blobs/{digest}") == (200, data)
    assert (await blob_rows(module_http_server))[digest] == "ok"


async def test_ranges_of_intact_blobs_and_repeat_reads_are_unaffected(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = await stored_blob(http, module_http_server, 3 * MiB)
    url = f"{module_http_server.url}/v1/blobs/{digest_of(data)}"
    for _ in range(2):
        assert await full_get(http, url) == (200, data)
    async with http.get(url, headers={"Range": "bytes=100-199"}) as response:
        assert response.status == 206
        assert await response.read() == data[100:200]
    assert (await blob_rows(module_http_server))[digest_of(data)] == "ok"


async def test_names_report_a_quarantined_blob_and_refuse_it(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    data, other = os.urandom(100_000), os.urandom(1000)
    digest = await upload(http, module_http_server, data)
    await upload(http, module_http_server, other)
    name = f"integrity/{os.urandom(4).hex()}/disk.qcow2"
    status, record, _ = await put_name(
        http, module_http_server, token, name, {"digest": digest}, create_only()
    )
    assert status == 201 and record["healthy"] is True
    flip_byte(blob_path(module_http_server.data_dir, digest), 99_999)
    assert (await full_get(http, f"{module_http_server.url}/v1/blobs/{digest}"))[0] is None

    status, record = await get_name(http, module_http_server, name)
    assert status == 200
    assert record["digest"] == digest and record["healthy"] is False
    async with http.get(f"{module_http_server.url}/v1/names", params={"prefix": name}) as response:
        assert [entry["healthy"] for entry in (await response.json())["names"]] == [False]

    # Pointing a name at it, new or existing, is refused and changes nothing.
    fresh = f"{name}.copy"
    status, problem, _ = await put_name(
        http, module_http_server, token, fresh, {"digest": digest}, create_only()
    )
    assert status == 422 and problem["code"] == "unknown-blob"
    assert (await get_name(http, module_http_server, fresh))[0] == 404
    status, moved, _ = await put_name(
        http, module_http_server, token, name, {"digest": digest_of(other)}, if_match(1)
    )
    assert status == 200 and moved["healthy"] is True
    status, problem, _ = await put_name(
        http, module_http_server, token, name, {"digest": digest}, if_match(2)
    )
    assert status == 422 and problem["code"] == "unknown-blob"
    assert (await get_name(http, module_http_server, name))[1]["version"] == 2


async def test_metrics_count_quarantined_blobs(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    before = await metric_samples(http, module_http_server)
    data = await stored_blob(http, module_http_server, 10_000)
    flip_byte(blob_path(module_http_server.data_dir, digest_of(data)), 0)
    await full_get(http, f"{module_http_server.url}/v1/blobs/{digest_of(data)}")

    after = await metric_samples(http, module_http_server)
    gauge = 'casd_stored_blobs{status="quarantined"}'
    assert after[gauge] - before.get(gauge, 0) == 1
    bytes_gauge = 'casd_stored_bytes{status="quarantined"}'
    assert after[bytes_gauge] - before.get(bytes_gauge, 0) == 10_000
    assert after["casd_blobs_quarantined_total"] - before["casd_blobs_quarantined_total"] == 1
