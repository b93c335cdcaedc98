"""``GET /v1/names/{name}/content`` (a name's bytes in one request, for any HTTP client) and
``GET /v1/uploads`` (the caller's uploads), against a real server."""

from __future__ import annotations

import os

import aiohttp

from tests.conftest import AnyServer
from tests.helpers import blob_path, digest_of, problem_of, put_blob
from tests.inprocess import InProcessServer
from tests.integrity_helpers import flip_byte, full_get
from tests.upload_helpers import MiB, bearer, call, create_upload


async def set_name(
    http: aiohttp.ClientSession, server: AnyServer, name: str, digest: str, version: int | None
) -> None:
    precondition = {"If-Match": f'"{version}"'} if version else {"If-None-Match": "*"}
    async with http.put(
        f"{server.url}/v1/names/{name}",
        json={"digest": digest},
        headers=server.admin_headers | precondition,
    ) as response:
        assert response.status in (200, 201), await response.text()


async def test_a_name_content_is_its_blob_in_one_request(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    first, second = os.urandom(3 * MiB), os.urandom(1000)
    for data in (first, second):
        await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    name = "content-test/images/disk.qcow2"
    url = f"{module_http_server.url}/v1/names/{name}/content"
    await set_name(http, module_http_server, name, digest_of(first), None)

    async with http.get(url) as response:
        assert response.status == 200
        assert await response.read() == first
        headers = response.headers
    assert headers["ETag"] == f'"{digest_of(first)}"'
    assert headers["Casd-Digest"] == digest_of(first)
    assert headers["Content-Location"] == f"/v1/blobs/{digest_of(first)}"
    assert headers["Cache-Control"] == "no-cache", "the name may move on: never 'immutable'"
    assert headers["Content-Type"] == "application/octet-stream"

    async with http.get(url, headers={"Range": "bytes=100-199"}) as response:
        assert response.status == 206
        assert await response.read() == first[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(first)}"
    async with http.head(url) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(first))
        assert await response.read() == b""
    etag = {"If-None-Match": f'"{digest_of(first)}"'}
    async with http.get(url, headers=etag) as response:
        assert response.status == 304
        assert response.headers["Cache-Control"] == "no-cache"

    await set_name(http, module_http_server, name, digest_of(second), 1)
    async with http.get(url, headers=etag) as response:
        assert response.status == 200, "a cache revalidating the old digest gets the new bytes"
        assert await response.read() == second
        assert response.headers["Casd-Digest"] == digest_of(second)

    async with http.get(
        f"{module_http_server.url}/v1/names/content-test/missing/content"
    ) as response:
        assert response.status == 404
        assert (await problem_of(response))["code"] == "name-not-found"
    async with http.get(f"{module_http_server.url}/v1/names/content-test/../x/content") as response:
        assert response.status in (400, 404)
        await problem_of(response)
    async with http.get(f"{module_http_server.url}/v1/names/{name}") as response:
        assert (await response.json())["version"] == 2, "the record itself is still there"


async def test_a_corrupt_blob_is_not_sent_complete_by_name(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5 * MiB)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    name = "content-test/rotten.img"
    await set_name(http, module_http_server, name, digest_of(data), None)
    flip_byte(blob_path(module_http_server.data_dir, digest_of(data)), 4 * MiB)
    url = f"{module_http_server.url}/v1/names/{name}/content"
    status, received = await full_get(http, url)
    assert status is None and len(received) < len(data), "the transfer was cut"
    async with http.get(url) as response:
        assert response.status == 410
        assert (await problem_of(response))["code"] == "blob-quarantined"


async def test_uploads_are_listed_to_their_token_only(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    mine = module_http_server.run_cli("token", "create", "--write", "uploads-a").stdout.strip()
    theirs = module_http_server.run_cli("token", "create", "--write", "uploads-b").stdout.strip()
    url = await create_upload(
        http, module_http_server, mine, data=b"x" * 1000, Upload_Length="5000"
    )
    listing = f"{module_http_server.url}/v1/uploads"
    answer = await call(http, "GET", listing, headers=bearer(mine))
    assert answer.status == 200
    (upload,) = answer.body["uploads"]
    assert upload["id"] == url.rpartition("/")[2]
    assert (upload["offset"], upload["length"], upload["digest"]) == (1000, 5000, None)
    assert upload["age"] >= 0 and upload["idle"] >= 0 and upload["created_at"]
    assert answer.headers["Cache-Control"] == "no-store"
    assert (await call(http, "GET", listing, headers=bearer(theirs))).body == {"uploads": []}
    async with http.get(listing) as response:
        assert response.status == 401
        assert (await problem_of(response))["code"] == "unauthorized"
