"""Stalled bodies end with 408 and give back what they held; one token's uploads in progress
are capped per worker process (issue 9, defect 3)."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import psutil

from tests.conftest import AnyServer, HttpServerFactory, ServerFactory
from tests.helpers import digest_of, put_blob
from tests.test_hostile import RawAnswer
from tests.upload_helpers import create_upload, offset_of, patch, slow_chunks

TIMEOUTS = {"CASD_BODY_TIMEOUT": "1s", "CASD_MAX_UPLOADS_PER_TOKEN": "4"}


class StalledRequest:
    """A request whose client sends its head and part of its body, then nothing."""

    def __init__(self, server: AnyServer) -> None:
        self.server = server
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(
        self, method: str, path: str, token: str, announced: int, part: bytes, **headers: str
    ) -> StalledRequest:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {announced}"]
        lines += [f"Authorization: Bearer {token}"]
        lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + part)
        await self.writer.drain()
        return self

    async def answer(self, seconds: float = 10.0) -> RawAnswer:
        assert self.reader is not None
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), seconds)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawAnswer(int(lines[0].split()[1]), headers, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


def staging_files(server: AnyServer) -> list[str]:
    return [path.name for path in (server.data_dir / "staging").iterdir()]


async def test_stalled_bodies_end_with_408_and_release_their_staging(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory(env=TIMEOUTS)
    token = server.admin_token
    data = os.urandom(2_000_000)
    stalled = [
        await StalledRequest(server).send(
            "PUT", f"/v1/blobs/{digest_of(data)}", token, len(data), data[:300_000]
        ),
        await StalledRequest(server).send("POST", "/v1/blobs", token, len(data), data[:1000]),
        await StalledRequest(server).send(
            "PUT", "/v1/names/stalled/name", token, 200, b'{"digest": ', If_None_Match="*"
        ),
        await StalledRequest(server).send("POST", "/v1/uploads", token, len(data), data[:5000]),
    ]
    started = time.monotonic()
    try:
        for request in stalled:
            answer = await request.answer()
            assert answer.status == 408, answer
            assert answer.problem()["code"] == "request-timeout"
        assert time.monotonic() - started < 5
    finally:
        for request in stalled:
            request.close()
    await asyncio.sleep(0.2)
    assert staging_files(server) == []
    assert list((server.data_dir / "uploads").iterdir()) == []
    assert not list((server.data_dir / "blobs").rglob("*")) or all(
        path.is_dir() for path in (server.data_dir / "blobs").rglob("*")
    )


async def test_a_stalled_patch_keeps_its_bytes_and_stays_resumable(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory(env=TIMEOUTS)
    token = server.admin_token
    data = os.urandom(3_000_000)
    url = await create_upload(http, server, token, data=data[:1000])
    path = url.removeprefix(server.url)
    request = await StalledRequest(server).send(
        "PATCH", path, token, len(data) - 1000, data[1000:801_000], Upload_Offset="1000"
    )
    try:
        answer = await request.answer()
    finally:
        request.close()
    assert answer.status == 408, answer
    assert answer.problem()["code"] == "request-timeout"
    assert answer.headers["upload-offset"] == "801000"
    assert await offset_of(http, url, token) == 801_000
    done = await patch(http, url, token, 801_000, data[801_000:], complete=True)
    assert done.status == 201, done
    async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
        assert await response.read() == data


async def test_slow_but_steady_bodies_are_not_cut(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory(env=TIMEOUTS)
    data = os.urandom(40)
    async with http.put(
        f"{server.url}/v1/blobs/{digest_of(data)}",
        data=slow_chunks(data, 4, 0.4),  # 4 s in all, never 1 s without a byte
        headers=server.admin_headers,
    ) as response:
        assert response.status == 201


async def test_uploads_in_progress_are_capped_per_token(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory(env={"CASD_BODY_TIMEOUT": "3s", "CASD_MAX_UPLOADS_PER_TOKEN": "4"})
    token = server.admin_token
    other = server.run_cli("token", "create", "--write", "other").stdout.strip()
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    fds_before, memory_before = process.num_fds(), process.memory_info().rss
    data = os.urandom(1_000_000)
    slow = [
        await StalledRequest(server).send(
            "PUT", f"/v1/blobs/{digest_of(data)}", token, len(data), data[:100_000]
        )
        for _ in range(4)
    ]
    crowd: list[StalledRequest] = []
    try:
        await asyncio.sleep(0.3)
        # A few hundred more stalled clients of the same token are turned away at once.
        for _ in range(200):
            crowd.append(await StalledRequest(server).send("POST", "/v1/blobs", token, 10**6, b"x"))
        answers = await asyncio.gather(*(request.answer(5) for request in crowd))
        assert {answer.status for answer in answers} == {429}
        assert answers[0].problem()["code"] == "too-many-uploads"
        assert answers[0].headers["retry-after"] == "1"
        # Other tokens, reads and health checks are served meanwhile.
        assert (await put_blob(http, server.url, other, b"other token"))[0] == 201
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200
        assert process.num_fds() < fds_before + 250
        assert process.memory_info().rss < memory_before + 200 * 1024 * 1024
        status, _ = await put_blob(http, server.url, token, b"over the cap")
        assert status == 429
        # The stalled four end (408) and their slots are free again.
        for request in slow:
            assert (await request.answer()).status == 408
    finally:
        for request in slow + crowd:
            request.close()
    assert (await put_blob(http, server.url, token, b"a slot is free"))[0] == 201
