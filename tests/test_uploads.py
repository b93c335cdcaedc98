"""Resumable uploads against real servers: the protocol, bad input, ownership, expiry, a writer
ended by a returning client (across two worker processes), concurrent resumers, and a 300 MiB
upload cut off again and again, through a server restart, resumed by the client library."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import blake3
import pytest

from casd.client import Client, Retry
from tests.conftest import CasdServer, HttpServerFactory, ServerFactory
from tests.helpers import blob_path, digest_of, problem_of
from tests.inprocess import InProcessServer
from tests.upload_helpers import (
    Budget,
    CuttingProxy,
    HangingPatch,
    MiB,
    access_pids,
    bearer,
    call,
    create_upload,
    head,
    lease_pids,
    offset_of,
    patch,
    slow_chunks,
    staged_bytes,
    staged_size,
    upload_id,
    upload_rows,
    wait_until,
)


@pytest.fixture
def two_workers(casd_server_factory: ServerFactory) -> CasdServer:
    """casd serve with two worker processes: their pids tell in the log which one served."""
    return casd_server_factory("--workers", "2")


@pytest.fixture
def limited(http_server_factory: HttpServerFactory) -> InProcessServer:
    """Idle uploads expire after a second; blobs may have at most 1 MiB; two workers sweep."""
    return http_server_factory(
        "--workers", "2", env={"CASD_UPLOAD_TTL": "1s", "CASD_MAX_BLOB_SIZE": "1MiB"}
    )


@pytest.fixture(scope="module")
def other_token(module_http_server: InProcessServer) -> str:
    result = module_http_server.run_cli("token", "create", "--write", "someone/else")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
async def client(module_http_server: InProcessServer) -> AsyncIterator[Client]:
    async with Client(module_http_server.url, module_http_server.admin_token) as casd:
        yield casd


async def test_upload_in_pieces(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    data = os.urandom(3 * MiB + 11)
    digest = digest_of(data)
    url = await create_upload(
        http, module_http_server, token, Upload_Length=str(len(data)), Casd_Digest=digest
    )
    answer = await patch(http, url, token, 0, data[:MiB])
    assert answer.status == 204
    assert answer.headers["Upload-Offset"] == str(MiB)
    answer = await head(http, url, token)
    assert answer.status == 204
    assert answer.headers["Upload-Offset"] == str(MiB)
    assert answer.headers["Upload-Length"] == str(len(data))
    assert answer.headers["Upload-Complete"] == "?0"
    assert answer.headers["Cache-Control"] == "no-store"
    assert len(staged_bytes(module_http_server, url) or b"") == MiB

    answer = await patch(http, url, token, MiB, data[MiB:], complete=True)
    assert answer.status == 201
    assert answer.headers["Location"] == f"/v1/blobs/{digest}"
    assert answer.body == {"digest": digest, "size": len(data)}
    finished = await head(http, url, token)
    assert finished.status == 204, "a finished upload says so, and where its blob is"
    assert finished.headers["Upload-Complete"] == "?1"
    assert finished.headers["Upload-Offset"] == str(len(data))
    assert finished.headers["Location"] == f"/v1/blobs/{digest}"
    assert staged_bytes(module_http_server, url) is None
    assert blob_path(module_http_server.data_dir, digest).read_bytes() == data
    async with http.get(f"{module_http_server.url}/v1/blobs/{digest}") as response:
        assert await response.read() == data


async def test_post_with_the_first_bytes_or_all(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    data = os.urandom(2 * MiB)
    url = await create_upload(http, module_http_server, token, data=data[:1000])
    assert await offset_of(http, url, token) == 1000
    answer = await patch(http, url, token, 1000, data[1000:], complete=True)
    assert answer.body == {"digest": digest_of(data), "size": len(data)}

    whole = os.urandom(5000)
    answer = await call(
        http,
        "POST",
        f"{module_http_server.url}/v1/uploads",
        data=whole,
        headers=bearer(token) | {"Upload-Complete": "?1", "Casd-Digest": digest_of(whole)},
    )
    assert answer.status == 201
    assert answer.headers["Location"] == f"/v1/blobs/{digest_of(whole)}"
    assert answer.body == {"digest": digest_of(whole), "size": 5000}


async def test_wrong_offsets_are_refused(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    url = await create_upload(http, module_http_server, token, data=b"x" * 100)
    for wrong in (0, 99, 101, 10**12):
        answer = await patch(http, url, token, wrong, b"y" * 50)
        assert answer.status == 409, answer.body
        assert answer.body["code"] == "mismatching-upload-offset"
        assert answer.headers["Upload-Offset"] == "100"
    assert (await patch(http, url, token, 100, b"y" * 50)).status == 204
    assert await offset_of(http, url, token) == 150
    assert staged_bytes(module_http_server, url) == b"x" * 100 + b"y" * 50

    for bad in ("-1", "abc", ""):
        answer = await patch(http, url, token, 0, b"z", Upload_Offset=bad)
        assert answer.status == 400
        assert answer.body["code"] == "invalid-request"
    for complete in ("?2", "true"):
        answer = await patch(http, url, token, 150, b"z", Upload_Complete=complete)
        assert answer.status == 400
    assert await offset_of(http, url, token) == 150


async def test_uploads_belong_to_their_token(
    module_http_server: InProcessServer, http: aiohttp.ClientSession, other_token: str
) -> None:
    token = module_http_server.admin_token
    url = await create_upload(http, module_http_server, token, data=b"mine")
    assert (await head(http, url, other_token)).status == 404
    answer = await patch(http, url, other_token, 4, b"theirs")
    assert answer.status == 404
    assert answer.body["code"] == "upload-not-found"
    answer = await call(http, "DELETE", url, headers=bearer(other_token))
    assert answer.status == 404
    assert await offset_of(http, url, token) == 4
    assert staged_bytes(module_http_server, url) == b"mine"

    for method in ("HEAD", "PATCH", "DELETE"):
        assert (await call(http, method, url)).status == 401
    async with http.post(f"{module_http_server.url}/v1/uploads") as response:
        assert response.status == 401
        assert (await problem_of(response))["code"] == "unauthorized"
    missing = f"{module_http_server.url}/v1/uploads/{'0' * 32}"
    assert (await head(http, missing, token)).status == 404
    answer = await call(http, "HEAD", f"{module_http_server.url}/v1/uploads/..%2F..%2Fx")
    assert answer.status in (400, 404)


async def test_digest_mismatch_discards_the_upload(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    data = os.urandom(2 * MiB)
    promised = digest_of(b"something else")
    url = await create_upload(http, module_http_server, token, Casd_Digest=promised)
    assert (await patch(http, url, token, 0, data[:MiB])).status == 204
    answer = await patch(http, url, token, MiB, data[MiB:], complete=True)
    assert answer.status == 400
    assert answer.body["code"] == "digest-mismatch"
    assert (await head(http, url, token)).status == 404
    assert staged_bytes(module_http_server, url) is None
    for digest in (promised, digest_of(data)):
        assert not blob_path(module_http_server.data_dir, digest).exists()
        async with http.head(f"{module_http_server.url}/v1/blobs/{digest}") as response:
            assert response.status == 404

    url = await create_upload(http, module_http_server, token, data=b"abc")
    answer = await patch(http, url, token, 3, b"def", complete=True, Casd_Digest=promised)
    assert answer.body["code"] == "digest-mismatch"
    assert upload_id(url) not in await upload_rows(module_http_server)


async def test_upload_length_is_enforced(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    url = await create_upload(http, module_http_server, token, data=b"0123", Upload_Length="10")

    answer = await patch(http, url, token, 4, b"x" * 20)
    assert (answer.status, answer.body["code"]) == (400, "invalid-request")
    # Without Content-Length the excess shows only mid-stream: the request changes nothing.
    answer = await patch(http, url, token, 4, slow_chunks(b"x" * 20, 4, 0.01))
    assert (answer.status, answer.body["code"]) == (400, "invalid-request")
    answer = await patch(http, url, token, 4, b"x" * 3, complete=True)
    assert answer.status == 400, "complete short of Upload-Length"
    answer = await patch(http, url, token, 4, b"x" * 3, Upload_Length="12")
    assert answer.status == 400, "a different Upload-Length"
    assert await offset_of(http, url, token) == 4
    assert len(staged_bytes(module_http_server, url) or b"") <= 10

    answer = await patch(http, url, token, 4, b"456789", complete=True)
    assert answer.body == {"digest": digest_of(b"0123456789"), "size": 10}

    before = set(await upload_rows(module_http_server))
    answer = await call(
        http,
        "POST",
        f"{module_http_server.url}/v1/uploads",
        data=slow_chunks(b"y" * 30, 10, 0.01),
        headers=bearer(token) | {"Upload-Length": "20"},
    )
    assert (answer.status, answer.body["code"]) == (400, "invalid-request")
    assert set(await upload_rows(module_http_server)) == before, "a refused POST leaves no upload"

    url = await create_upload(http, module_http_server, token)
    answer = await patch(http, url, token, 0, b"late length", Upload_Length="11", complete=True)
    assert answer.body == {"digest": digest_of(b"late length"), "size": 11}


async def test_bad_headers_change_nothing(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    before = await upload_rows(module_http_server)
    for headers, code in [
        ({"Casd-Digest": "sha256:" + "0" * 64}, "invalid-digest"),
        ({"Upload-Length": "-5"}, "invalid-request"),
        ({"Upload-Length": "ten"}, "invalid-request"),
        ({"Upload-Length": "9" * 5000}, "invalid-request"),
        ({"Upload-Complete": "yes"}, "invalid-request"),
    ]:
        answer = await call(
            http,
            "POST",
            f"{module_http_server.url}/v1/uploads",
            data=b"body",
            headers=bearer(token) | headers,
        )
        assert (answer.status, answer.body["code"]) == (400, code), headers
    assert await upload_rows(module_http_server) == before

    url = await create_upload(http, module_http_server, token, data=b"1234")
    answer = await patch(http, url, token, 4, b"x", Casd_Digest="blake3:xyz")
    assert (answer.status, answer.body["code"]) == (400, "invalid-digest")
    assert await offset_of(http, url, token) == 4


async def test_delete_removes_the_staged_bytes(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = module_http_server.admin_token
    url = await create_upload(http, module_http_server, token, data=os.urandom(1000))
    assert staged_bytes(module_http_server, url) is not None
    assert (await call(http, "DELETE", url, headers=bearer(token))).status == 204
    assert staged_bytes(module_http_server, url) is None
    assert (await head(http, url, token)).status == 404
    assert (await patch(http, url, token, 1000, b"more")).status == 404
    assert (await call(http, "DELETE", url, headers=bearer(token))).status == 404


async def test_size_limit_and_expiry_of_idle_uploads(
    limited: InProcessServer, http: aiohttp.ClientSession
) -> None:
    token = limited.admin_token
    answer = await call(
        http,
        "POST",
        f"{limited.url}/v1/uploads",
        headers=bearer(token) | {"Upload-Length": str(2 * MiB)},
    )
    assert (answer.status, answer.body["code"]) == (413, "payload-too-large")
    url = await create_upload(http, limited, token, data=b"z" * 1000)
    answer = await patch(http, url, token, 1000, os.urandom(MiB))
    assert answer.status == 413
    answer = await patch(http, url, token, 1000, slow_chunks(os.urandom(MiB), 256 * 1024, 0))
    assert answer.status == 413
    assert await offset_of(http, url, token) == 1000

    idle = await create_upload(http, limited, token, data=b"idle")
    busy = await create_upload(http, limited, token, data=b"busy")
    stuck = await create_upload(http, limited, token)
    orphan = limited.data_dir / "uploads" / ("f" * 32) / "1.0"
    orphan.parent.mkdir()
    orphan.write_bytes(b"staged bytes whose upload row is gone")
    silent = HangingPatch(limited, stuck, token)
    try:
        await silent.send(0, 1000, b"s" * 10)  # then silence, for longer than the TTL
        for _ in range(12):  # 3 s: three times the TTL, but the busy upload is never idle
            assert (await head(http, busy, token)).status == 204
            await asyncio.sleep(0.25)
        assert (await silent.ended()).startswith(b"HTTP/1.1 404"), "the stuck request ended"
    finally:
        silent.close()
    for gone in (idle, stuck):
        assert (await head(http, gone, token)).status == 404
        assert staged_bytes(limited, gone) is None
    assert not orphan.exists()
    assert await offset_of(http, busy, token) == 4
    assert staged_bytes(limited, busy) == b"busy"


async def test_returning_client_ends_the_hanging_patch(
    two_workers: CasdServer, http: aiohttp.ClientSession
) -> None:
    """A client whose PATCH hangs in one worker comes back with HEAD or PATCH (to either
    worker): the old request is ended, keeps what it received, and the upload goes on."""
    token = two_workers.admin_token
    crossed = same = 0
    for attempt in range(24):
        if crossed and same and attempt >= 4:
            break
        old_process, new_pid = await hang_and_resume(two_workers, http, token, attempt)
        pids = lease_pids(two_workers.log())
        crossed += pids[old_process] != new_pid
        same += pids[old_process] == new_pid
    assert crossed, "never resumed in the other worker (SO_REUSEPORT picks one at random)"


async def hang_and_resume(
    server: CasdServer, http: aiohttp.ClientSession, token: str, attempt: int
) -> tuple[int, int]:
    """One hanging PATCH and its resumption; the lease number of the process that held the
    hanging request and the pid of the process that served the returning client."""
    data = os.urandom(5 * MiB)
    url = await create_upload(http, server, token, Casd_Digest=digest_of(data))
    hanging = HangingPatch(server, url, token)
    try:
        await hanging.send(0, len(data), data[: 3 * MiB])
        await wait_until(lambda: staged_size(server, url) >= 2 * MiB, "the server to write")
        writer = (await upload_rows(server))[upload_id(url)]["writer_process"]
        assert writer is not None
        if attempt % 2:
            # The client believes nothing arrived: its PATCH ends the old one, then learns.
            answer = await patch(http, url, token, 0, data)
            assert answer.status == 409, answer.body
            offset = int(answer.headers["Upload-Offset"])
            method = "PATCH"
        else:
            offset = await offset_of(http, url, token)
            method = "HEAD"
        assert 2 * MiB <= offset <= 3 * MiB, "the bytes the hanging request received are kept"
        assert (await hanging.ended()).startswith(b"HTTP/1.1 409"), "the old request ended"
        answer = await patch(http, url, token, offset, data[offset:], complete=True)
        assert answer.body == {"digest": digest_of(data), "size": len(data)}
    finally:
        hanging.close()
    pids = access_pids(server.log(), method, url.removeprefix(server.url))
    return writer, pids[0]


async def test_concurrent_resumers_never_interleave(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Eight clients resume one upload at once, each ending the others' requests: every byte
    lands once, in order, and all of them end with the one verified blob (two workers)."""
    two_workers = http_server_factory("--workers", "2")
    data = os.urandom(24 * MiB)
    source = tmp_path / "data"
    source.write_bytes(data)
    digest = digest_of(data)
    retry = Retry(attempts=40, first_delay=0.05, max_delay=0.5)
    async with Client(two_workers.url, two_workers.admin_token, retry=retry) as casd:
        url = await casd.start_upload(len(data), digest)
        results = await asyncio.wait_for(
            asyncio.gather(*(casd.resume_upload(url, source, digest=digest) for _ in range(8))),
            120,
        )
    assert {(result.digest, result.size) for result in results} == {(digest, len(data))}
    assert blake3.blake3(blob_path(two_workers.data_dir, digest).read_bytes()).hexdigest() == (
        digest.removeprefix("blake3:")
    )
    assert upload_id(url) not in await upload_rows(two_workers)


async def test_killed_server_keeps_the_recorded_offset(
    module_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    """kill -9 while a PATCH hangs: the restarted server knows the writer is gone at once, the
    upload resumes at the last recorded offset, and unrecorded bytes are written again."""
    token = module_server.admin_token
    data = os.urandom(6 * MiB)
    url = await create_upload(http, module_server, token, Casd_Digest=digest_of(data))
    assert (await patch(http, url, token, 0, data[:MiB])).status == 204
    hanging = HangingPatch(module_server, url, token)
    await hanging.send(MiB, 5 * MiB, data[MiB : 4 * MiB])
    await wait_until(lambda: staged_size(module_server, url) >= 3 * MiB, "the server to write")
    module_server.stop(signal.SIGKILL)
    hanging.close()
    module_server.start()
    answer = await head(http, url, token)
    assert answer.headers["Upload-Offset"] == str(MiB)
    answer = await patch(http, url, token, MiB, b"\0" * MiB)  # garbage, to be cut off
    assert answer.status == 204
    assert (await call(http, "DELETE", url, headers=bearer(token))).status == 204

    url = await create_upload(http, module_server, token, Casd_Digest=digest_of(data))
    assert (await patch(http, url, token, 0, data[:MiB])).status == 204
    hanging = HangingPatch(module_server, url, token)
    await hanging.send(MiB, 5 * MiB, b"\xff" * (3 * MiB))  # never recorded: must not stay
    await wait_until(lambda: staged_size(module_server, url) >= 3 * MiB, "the server to write")
    module_server.stop(signal.SIGKILL)
    hanging.close()
    module_server.start()
    assert await offset_of(http, url, token) == MiB
    answer = await patch(http, url, token, MiB, data[MiB:], complete=True)
    assert answer.body == {"digest": digest_of(data), "size": len(data)}


async def test_uploads_go_on_when_the_lease_connection_is_lost(
    module_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    """The database drops the connection a server listens and holds its process lock on: the
    server ends its writers (keeping their bytes), reconnects, and uploads go on."""
    token = module_server.admin_token
    data = os.urandom(4 * MiB)
    url = await create_upload(http, module_server, token, Casd_Digest=digest_of(data))
    hanging = HangingPatch(module_server, url, token)
    try:
        await hanging.send(0, len(data), data[: 2 * MiB])
        await wait_until(lambda: staged_size(module_server, url) >= MiB, "the server to write")
        numbers = len(lease_pids(module_server.log()))
        connection = await module_server.connect_db()
        try:
            terminated = await connection.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = $1 AND objsubid = 2 AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
                0x63617364,
            )
        finally:
            await connection.close()
        assert len(terminated) == 1
        assert (await hanging.ended()).startswith(b"HTTP/1.1 503"), "its writer was ended"
        await wait_until(
            lambda: len(lease_pids(module_server.log())) > numbers, "the server to reconnect"
        )
    finally:
        hanging.close()
    offset = await offset_of(http, url, token)
    assert MiB <= offset <= 2 * MiB
    answer = await patch(http, url, token, offset, data[offset:], complete=True)
    assert answer.body == {"digest": digest_of(data), "size": len(data)}


async def test_300_mib_upload_survives_aborts_cuts_and_a_restart(
    module_server: CasdServer, tmp_path: Path
) -> None:
    """The client aborts once, the connection is cut twice mid-stream, and the server restarts
    while a PATCH hangs; the client library resumes each time to the verified blob, and the
    staged prefix is hashed again only once (by the restarted server)."""
    size = 300 * MiB
    source = tmp_path / "image.qcow2"
    data = os.urandom(size)
    source.write_bytes(data)
    digest = digest_of(data)
    del data
    seen: list[int] = []

    async with Client(module_server.url, module_server.admin_token) as casd:
        url = await casd.start_upload(size, digest)
        aborting = asyncio.ensure_future(
            casd.resume_upload(
                url, source, digest=digest, progress=lambda done, _: seen.append(done)
            )
        )
        await wait_until(lambda: bool(seen) and seen[-1] >= 40 * MiB, "40 MiB to go out")
        aborting.cancel()  # the client aborts
        with pytest.raises(asyncio.CancelledError):
            await aborting
        assert 0 < await casd.upload_offset(url) < size

    budgets = [Budget(50 * MiB), Budget(50 * MiB), Budget(50 * MiB, stall=True)]
    async with CuttingProxy(module_server.port, budgets) as proxy:
        proxied_url = proxy.url + url.removeprefix(module_server.url)
        async with Client(proxy.url, module_server.admin_token) as casd:
            resuming = asyncio.ensure_future(casd.resume_upload(proxied_url, source, digest=digest))
            await asyncio.wait_for(proxy.stalled.wait(), 60)
            await asyncio.to_thread(module_server.restart)  # SIGTERM while the PATCH hangs
            proxy.release_stall()
            result = await asyncio.wait_for(resuming, 120)

    assert (result.digest, result.size) == (digest, size)
    stored = blob_path(module_server.data_dir, digest)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with stored.open("rb") as file:
        while chunk := file.read(16 * MiB):
            hasher.update(chunk)
    assert "blake3:" + hasher.hexdigest() == digest
    rehashes = [
        line
        for line in module_server.log().splitlines()
        if f"upload {upload_id(url)}: hashing" in line
    ]
    assert len(rehashes) == 1, rehashes
    assert staged_bytes(module_server, url) is None
