"""The Python client library against a real server (and, for a download altered in flight, a
small real HTTP server of the test's own): uploads small and large, verified downloads, names
with compare-and-swap, typed errors."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from casd import wire
from casd.client import Client, NameRecord, Retry
from casd.errors import (
    BlobNotFound,
    DigestMismatch,
    Forbidden,
    InvalidDigest,
    InvalidName,
    NameNotFound,
    PreconditionFailed,
    PreconditionRequired,
    Unauthorized,
    UnknownBlob,
)
from tests.helpers import digest_of
from tests.inprocess import InProcessServer
from tests.upload_helpers import CuttingProxy, MiB

Change = Callable[[NameRecord | None], tuple[str, dict[str, Any]]]


@pytest.fixture
async def client(module_http_server: InProcessServer) -> AsyncIterator[Client]:
    async with Client(module_http_server.url, module_http_server.admin_token) as casd:
        yield casd


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if "casd-part" in path.name)


async def test_small_file_in_one_put_sends_nothing_when_stored(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    source = write(tmp_path / "small.img", data)
    async with (
        CuttingProxy(module_http_server.port, []) as proxy,
        Client(proxy.url, module_http_server.admin_token) as casd,
    ):
        first = await casd.put_file(source)
        sent_first = proxy.forwarded
        again = await casd.put_file(source)
        sent_again = proxy.forwarded - sent_first
    assert (first.digest, first.size, first.created) == (digest_of(data), len(data), True)
    assert (again.digest, again.created) == (digest_of(data), False)
    assert sent_first > len(data)
    assert sent_again < 64 * 1024, "Expect: 100-continue: the stored blob's bytes stay home"


async def test_large_file_goes_through_a_resumable_upload(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    data = os.urandom(5 * MiB + 3)
    source = write(tmp_path / "large.img", data)
    seen: list[tuple[int, int]] = []
    async with Client(
        module_http_server.url, module_http_server.admin_token, small_file_limit=MiB
    ) as casd:
        blob = await casd.put_file(source, progress=lambda done, total: seen.append((done, total)))
        again = await casd.put_file(source)
    assert (blob.digest, blob.size, blob.created) == (digest_of(data), len(data), True)
    assert not again.created
    connection = await module_http_server.connect_db()
    try:
        completed = await connection.fetchval(
            "SELECT count(*) FROM uploads WHERE completed_digest = $1", digest_of(data)
        )
    finally:
        await connection.close()
    assert completed == 1, "it went through a resumable upload, to its end"
    assert seen[-1] == (len(data), len(data))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


async def test_get_writes_verified_bytes_only(client: Client, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    blob = await client.put_bytes(data)
    target = tmp_path / "copy.img"
    seen: list[int] = []
    got = await client.get(blob.digest, target, progress=lambda done, total: seen.append(done))
    assert (got.digest, got.size) == (blob.digest, len(data))
    assert target.read_bytes() == data
    assert seen[-1] == len(data)
    assert leftovers(tmp_path) == []

    missing = digest_of(b"never stored")
    with pytest.raises(BlobNotFound) as raised:
        await client.get_blob(missing, tmp_path / "missing.img")
    assert (raised.value.code, raised.value.status) == ("blob-not-found", 404)
    assert not (tmp_path / "missing.img").exists()
    with pytest.raises(InvalidDigest):
        await client.get_blob("sha256:abc", tmp_path / "bad.img")
    assert leftovers(tmp_path) == []


class FakeBlobServer:
    """A real HTTP server on loopback that serves one digest with bytes of its choosing."""

    def __init__(self, digest: str, bodies: list[bytes], cut_first: bool = False) -> None:
        self.digest, self.bodies, self.cut_first = digest, bodies, cut_first
        self.requests: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/blobs/{digest}", self.serve)
        return app

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.headers.get("Range"))
        body = self.bodies[min(len(self.requests), len(self.bodies)) - 1]
        start = int(request.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(body) - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        await response.prepare(request)
        if self.cut_first and len(self.requests) == 1:
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.abort()  # a broken transfer: the client resumes with a range
            return response
        await response.write(body[start:])
        return response


async def test_download_altered_in_flight_is_refused(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    altered = bytearray(data)
    altered[MiB] ^= 0x01
    fake = FakeBlobServer(digest_of(data), [bytes(altered)])
    target = tmp_path / "image.qcow2"
    async with (
        TestServer(fake.app(), host="127.0.0.1") as test_server,
        Client(str(test_server.make_url(""))) as casd,
    ):
        with pytest.raises(DigestMismatch) as raised:
            await casd.get_blob(digest_of(data), target)
        assert raised.value.code == "digest-mismatch"
        assert not target.exists()
        assert files_in(tmp_path) == [], "the partial output is deleted"

        target.write_bytes(b"an older copy")
        with pytest.raises(DigestMismatch):
            await casd.get_blob(digest_of(data), target)
    assert target.read_bytes() == b"an older copy", "an existing file is left as it was"
    assert leftovers(tmp_path) == []


async def test_broken_download_resumes_with_a_range(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    fake = FakeBlobServer(digest_of(data), [data], cut_first=True)
    retry = Retry(attempts=3, first_delay=0.01)
    async with (
        TestServer(fake.app(), host="127.0.0.1") as test_server,
        Client(str(test_server.make_url("")), retry=retry) as casd,
    ):
        blob = await casd.get_blob(digest_of(data), tmp_path / "image.qcow2")
    assert blob.size == len(data)
    assert (tmp_path / "image.qcow2").read_bytes() == data
    assert fake.requests[0] is None
    assert fake.requests[1] is not None and fake.requests[1] != "bytes=0-"


async def test_names_with_compare_and_swap(client: Client, tmp_path: Path) -> None:
    first = await client.put_bytes(b"first build")
    second = await client.put_bytes(b"second build")
    name = "client-test/builds/disk.qcow2"
    with pytest.raises(NameNotFound):
        await client.resolve(name)
    created = await client.set_name(name, first.digest, create=True, metadata={"build": 1})
    assert (created.version, created.digest, created.metadata) == (1, first.digest, {"build": 1})
    assert created.healthy

    with pytest.raises(PreconditionFailed) as raised:
        await client.set_name(name, second.digest, version=7)
    assert raised.value.code == "precondition-failed"
    assert raised.value.status == 412
    assert raised.value.extra["current"]["version"] == 1
    with pytest.raises(PreconditionFailed):
        await client.set_name(name, second.digest, create=True)
    with pytest.raises(PreconditionRequired):
        await client.set_name(name, second.digest)
    with pytest.raises(UnknownBlob):
        await client.set_name(name, digest_of(b"not stored"), version=1)
    with pytest.raises(InvalidName):
        await client.set_name("client-test/../escape", first.digest, create=True)

    updated = await client.set_name(name, second.digest, version=1)
    assert (updated.version, updated.metadata) == (2, {"build": 1}), "metadata kept"
    assert (await client.resolve(name)).digest == second.digest
    target = tmp_path / "by-name.qcow2"
    await client.get(name, target)
    assert target.read_bytes() == b"second build"

    entries = await client.history(name)
    assert [(e.version, e.action, e.digest) for e in entries] == [
        (2, "update", second.digest),
        (1, "create", first.digest),
    ]
    assert entries[0].previous_digest == first.digest


async def test_read_modify_write_retries_on_conflicts(client: Client) -> None:
    """Twelve writers append to one name's metadata at once; each retries on 412 with the
    record the server reports, so every append survives."""
    blob = await client.put_bytes(b"shared")
    name = "client-test/counter"

    def append(writer: int) -> Change:
        def change(current: NameRecord | None) -> tuple[str, dict[str, Any]]:
            seen = list(current.metadata.get("writers", [])) if current is not None else []
            return blob.digest, {"writers": [*seen, writer]}

        return change

    records = await asyncio.gather(
        *(client.update_name(name, append(writer)) for writer in range(12))
    )
    final = await client.resolve(name)
    assert final.version == 12
    assert sorted(final.metadata["writers"]) == list(range(12))
    assert sorted(record.version for record in records) == list(range(1, 13))
    assert len(await client.history(name)) == 12


async def test_listing_follows_pages(client: Client) -> None:
    blob = await client.put_bytes(b"listed")
    names = [f"client-list/{index:02d}.img" for index in range(5)]
    for name in names:
        await client.set_name(name, blob.digest, create=True)
    await client.set_name("client-listing/outside.img", blob.digest, create=True)
    found = [record.name async for record in client.list_names("client-list/", page=2)]
    assert found == names


async def test_tokens_and_errors_are_typed(
    module_http_server: InProcessServer, tmp_path: Path
) -> None:
    source = write(tmp_path / "f.img", b"data")
    async with Client(module_http_server.url) as anonymous:
        with pytest.raises(Unauthorized) as raised:
            await anonymous.put_file(source)
        assert raised.value.code == "unauthorized"
    result = module_http_server.run_cli("token", "create", "--write", "client-scoped")
    async with Client(module_http_server.url, result.stdout.strip()) as scoped:
        blob = await scoped.put_file(source)
        await scoped.tag("client-scoped/f.img", blob.digest)
        with pytest.raises(Forbidden) as forbidden:
            await scoped.tag("elsewhere/f.img", blob.digest)
        assert (forbidden.value.code, forbidden.value.status) == ("forbidden", 403)
    assert blob.digest == "blake3:" + blake3.blake3(b"data").hexdigest()


class FakeUploadServer:
    """A real HTTP server on loopback that plays an upload endpoint: it keeps the first half
    of the first PATCH and answers it like casd answers a body that broke off."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.patches: list[int] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("HEAD", "/v1/uploads/u1", self.head)
        app.router.add_patch("/v1/uploads/u1", self.patch)
        return app

    async def head(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Upload-Offset": str(len(self.received))})

    async def patch(self, request: web.Request) -> web.Response:
        self.patches.append(int(request.headers["Upload-Offset"]))
        body = await request.read()
        if len(self.patches) == 1:
            self.received += body[: len(body) // 2]
            problem = {"type": "about:blank", "title": "Invalid request", "status": 400}
            problem |= {"detail": "the body broke off", "code": "invalid-request"}
            return web.json_response(
                problem, status=400, headers={"Upload-Offset": str(len(self.received))}
            )
        self.received += body
        digest = digest_of(bytes(self.received))
        return web.json_response({"digest": digest, "size": len(self.received)}, status=201)


async def test_resume_goes_on_after_a_broken_body_answer(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    source = write(tmp_path / "f.img", data)
    fake = FakeUploadServer()
    retry = Retry(attempts=3, first_delay=0.01)
    async with (
        TestServer(fake.app(), host="127.0.0.1") as test_server,
        Client(str(test_server.make_url("")), retry=retry) as casd,
    ):
        url = str(test_server.make_url("/v1/uploads/u1"))
        blob = await casd.resume_upload(url, source, digest=digest_of(data))
    assert (blob.digest, blob.size) == (digest_of(data), len(data))
    assert fake.patches == [0, 50_000]
    assert bytes(fake.received) == data


class ReplayServer:
    """A real HTTP server on loopback that answers with the JSON it is given, by path: the
    records of a real casd, with members a newer server would add or an older one would lack."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.Response:
        return web.json_response(self.answers[request.path])


async def test_records_of_a_real_server_parse_with_members_added_or_missing(
    module_http_server: InProcessServer, client: Client, http: aiohttp.ClientSession
) -> None:
    first, second = await client.put_bytes(b"wire one"), await client.put_bytes(b"wire two")
    await client.set_name("client-wire/a", first.digest, create=True, metadata={"k": "v"})
    await client.set_name("client-wire/a", second.digest, version=1)
    await client.start_upload(size=10)
    paths = ["/v1/names/client-wire/a", "/v1/history/client-wire/a", "/v1/token", "/v1/uploads"]
    answers: dict[str, Any] = {}
    for path in [*paths, "/v1/names"]:
        query = {"prefix": "client-wire/"} if path == "/v1/names" else None
        async with http.get(
            module_http_server.url + path, params=query, headers=module_http_server.admin_headers
        ) as response:
            answers[path] = await response.json()
    record, entries = answers[paths[0]], answers[paths[1]]["history"]
    # The wire shapes know every member the server writes.
    assert wire.NameRecord.from_json(record).to_json() == record
    assert [wire.HistoryEntry.from_json(entry).to_json() for entry in entries] == entries
    assert wire.TokenInfo.from_json(answers["/v1/token"]).to_json() == answers["/v1/token"]
    listed = answers["/v1/uploads"]["uploads"]
    assert [wire.UploadSummary.from_json(upload).to_json() for upload in listed] == listed

    newer = {"labels": ["x"], "owner": {"team": "ci"}}
    older_record = {key: record[key] for key in ("name", "digest", "size", "version")}
    answers[paths[0]] = record | newer
    answers[paths[1]]["history"] = [
        {key: value for key, value in entry.items() if key != "source"} | newer for entry in entries
    ]
    answers["/v1/names"] = {"names": [older_record | newer], "next": None}
    token = answers["/v1/token"]
    answers["/v1/token"] = {key: token[key] for key in ("id", "write_prefixes")} | newer
    answers["/v1/uploads"] = {"uploads": [{"id": u["id"], "offset": 0} for u in listed]}
    async with (
        TestServer(ReplayServer(answers).app(), host="127.0.0.1") as replay,
        Client(str(replay.make_url(""))) as casd,
    ):
        assert (await casd.resolve("client-wire/a")).as_dict() == record
        history = await casd.history("client-wire/a")
        assert [(e.version, e.digest, e.source) for e in history] == [
            (2, second.digest, None),
            (1, first.digest, None),
        ]
        found = [found async for found in casd.list_names("client-wire/")]
        assert [(r.name, r.version, r.healthy, r.metadata) for r in found] == [
            ("client-wire/a", 2, True, {})
        ]
        info = await casd.token_info()
        assert info is not None and (info.id, info.admin, info.rights) == (token["id"], False, [])
        uploads = await casd.uploads()
        assert [(u["id"], u["length"], u["digest"]) for u in uploads] == [
            (u["id"], None, None) for u in listed
        ]
