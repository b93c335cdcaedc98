"""Quotas: a token's budget of new bytes (deduplicated uploads free) and a prefix's budget of
referenced bytes; refused with their own codes, before or while the body streams, with nothing
left behind; concurrent uploads and writes never take either past its limit."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.conftest import AnyServer, HttpServerFactory
from tests.helpers import blob_path, digest_of
from tests.inprocess import InProcessServer
from tests.integrity_helpers import metric_samples
from tests.name_helpers import create_only, if_match
from tests.policy_helpers import call, mint, own_token, set_policy


def leftovers(server: AnyServer) -> list[Path]:
    """Staged bytes of uploads and blobs: none may survive a refused upload."""
    return [
        path
        for folder in ("staging", "uploads")
        for path in (server.data_dir / folder).rglob("*")
        if path.is_file()
    ]


async def stored(http: aiohttp.ClientSession, server: AnyServer, data: bytes) -> bool:
    async with http.head(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
        assert response.status in (200, 404)
        return response.status == 200


async def test_a_token_quota_counts_new_bytes_and_refuses_early(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory()
    record = await mint(
        http, server, server.admin_token, write_prefixes=["quota"], quota_bytes=1000
    )
    token = record["token"]
    first, second = os.urandom(600), os.urandom(600)
    assert (await call(http, server, "PUT", f"/v1/blobs/{digest_of(first)}", token, data=first))[
        0
    ] == 201

    # Announced too large: refused before the body is read; nothing stored, nothing charged.
    status, problem = await call(
        http, server, "PUT", f"/v1/blobs/{digest_of(second)}", token, data=second
    )
    assert (status, problem["code"]) == (413, "quota-exceeded")
    status, problem = await call(http, server, "POST", "/v1/blobs", token, data=second)
    assert (status, problem["code"]) == (413, "quota-exceeded")
    assert not await stored(http, server, second)
    assert not blob_path(server.data_dir, digest_of(second)).exists()

    # Deduplicated uploads are free, with or without Expect, even past the budget.
    for headers in ({}, {"Expect": "100-continue"}):
        status, body = await call(
            http,
            server,
            "PUT",
            f"/v1/blobs/{digest_of(first)}",
            token,
            data=first,
            headers=headers,
        )
        assert (status, body["digest"]) == (200, digest_of(first))
    assert (await own_token(http, server, token))["used_bytes"] == 600

    third = os.urandom(300)
    assert (await call(http, server, "POST", "/v1/blobs", token, data=third))[0] == 201
    assert (await own_token(http, server, token))["used_bytes"] == 900

    # Unannounced (chunked): refused as soon as the bytes received pass the 100 left.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield os.urandom(50)

    status, problem = await call(http, server, "POST", "/v1/blobs", token, data=chunks())
    assert (status, problem["code"]) == (413, "quota-exceeded")

    # Resumable uploads: an announced length past the budget, or bytes that pass it later.
    status, problem = await call(
        http, server, "POST", "/v1/uploads", token, headers={"Upload-Length": "500"}
    )
    assert (status, problem["code"]) == (413, "quota-exceeded")
    async with http.post(
        f"{server.url}/v1/uploads",
        data=b"x" * 60,
        headers={"Authorization": f"Bearer {token}", "Upload-Complete": "?0"},
    ) as response:
        assert response.status == 201
        upload = server.url + response.headers["Location"]
    async with http.patch(
        upload,
        data=os.urandom(60),
        headers={
            "Authorization": f"Bearer {token}",
            "Upload-Offset": "60",
            "Upload-Complete": "?1",
        },
    ) as response:
        assert response.status == 413
        assert (await response.json(content_type=None))["code"] == "quota-exceeded"
    async with http.head(upload, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 404, "an upload over budget is discarded whole"

    assert leftovers(server) == []
    me = await own_token(http, server, token)
    assert (me["used_bytes"], me["quota_bytes"]) == (900, 1000)
    samples = await metric_samples(http, server)
    assert samples[f'casd_token_used_bytes{{token="{record["id"]}"}}'] == 900
    assert samples[f'casd_token_quota_bytes{{token="{record["id"]}"}}'] == 1000


async def test_concurrent_uploads_never_take_a_token_past_its_quota(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """The rule: every upload is checked against what was left when it began, and the budget
    is charged when its blob is published, under the token's row lock; so of uploads racing
    for the last bytes, exactly those that fit are stored, whatever the order."""
    server = module_http_server
    size, fits = 1000, 10
    token = (
        await mint(
            http, server, server.admin_token, write_prefixes=["race"], quota_bytes=size * fits
        )
    )["token"]
    blobs = [os.urandom(size) for _ in range(30)]

    async def put(data: bytes) -> int:
        status, _ = await call(
            http, server, "PUT", f"/v1/blobs/{digest_of(data)}", token, data=data
        )
        return status

    statuses = await asyncio.gather(*(put(data) for data in blobs))
    assert sorted(statuses) == [201] * fits + [413] * (len(blobs) - fits)
    kept = [await stored(http, server, data) for data in blobs]
    assert [status == 201 for status in statuses] == kept
    assert (await own_token(http, server, token))["used_bytes"] == size * fits

    # The same new bytes uploaded by many at once are charged once.
    shared = await mint(http, server, server.admin_token, write_prefixes=["race2"], quota_bytes=500)
    data = os.urandom(400)
    results = await asyncio.gather(
        *(
            call(http, server, "PUT", f"/v1/blobs/{digest_of(data)}", shared["token"], data=data)
            for _ in range(8)
        )
    )
    assert {status for status, _ in results} <= {200, 201}
    assert (await own_token(http, server, shared["token"]))["used_bytes"] == 400


async def test_a_prefix_quota_counts_the_bytes_its_names_reference(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server, admin = module_http_server, module_http_server.admin_token
    await set_policy(http, server, "team", quota_bytes=1500)
    big, small = os.urandom(1000), os.urandom(600)
    for data in (big, small):
        await call(http, server, "PUT", f"/v1/blobs/{digest_of(data)}", admin, data=data)

    async def name(name: str, data: bytes, condition: dict[str, str]) -> tuple[int, object]:
        return await call(
            http,
            server,
            "PUT",
            f"/v1/names/{name}",
            admin,
            json={"digest": digest_of(data)},
            headers=condition,
        )

    assert (await name("team/a", big, create_only()))[0] == 201
    assert (await name("team/b", big, create_only()))[0] == 201, "the same blob counts once"
    assert (await name("teamwork/c", small, create_only()))[0] == 201, "not under team/"
    for target, condition in (("team/c", create_only()), ("team/a", if_match(1))):
        status, problem = await name(target, small, condition)
        assert status == 409 and isinstance(problem, dict)
        assert (problem["code"], problem["prefix"], problem["used_bytes"]) == (
            "namespace-quota-exceeded",
            "team",
            1000,
        )
    status, _ = await call(http, server, "GET", "/v1/names/team/c", admin)
    assert status == 404
    status, policy = await call(http, server, "GET", "/v1/policies/team")
    assert (policy["used_bytes"], policy["quota_bytes"]) == (1000, 1500)
    # Once team/b lets go of the big blob, team/a may move to the small one.
    status, _ = await call(http, server, "DELETE", "/v1/names/team/b", admin, headers=if_match(1))
    assert status == 204
    assert (await name("team/a", small, if_match(1)))[0] == 200
    samples = await metric_samples(http, server)
    assert samples['casd_prefix_used_bytes{prefix="team"}'] == 600
    assert samples['casd_prefix_quota_bytes{prefix="team"}'] == 1500

    # Writers racing for the last bytes of a prefix: exactly those that fit get in.
    await set_policy(http, server, "crowd", quota_bytes=1000)
    pieces = [os.urandom(100) for _ in range(25)]
    for data in pieces:
        await call(http, server, "PUT", f"/v1/blobs/{digest_of(data)}", admin, data=data)
    statuses = await asyncio.gather(
        *(name(f"crowd/{n}", data, create_only()) for n, data in enumerate(pieces))
    )
    assert sorted(status for status, _ in statuses) == [201] * 10 + [409] * 15
    status, policy = await call(http, server, "GET", "/v1/policies/crowd")
    assert policy["used_bytes"] == 1000
