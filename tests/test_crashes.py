"""kill -9 between the steps of a publication (issue 9, defect 1): whatever the crash point, a
resumable upload is either still resumable with its bytes or complete with its blob stored,
and a blob file left without its row is adopted by the next start or the next upload of it.

The crash points are reached through the test hook ``CASD_TEST_CRASH_AT`` (casd.crashpoints):
the server kills itself with SIGKILL exactly there."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.conftest import AnyServer, CasdServer, ServerFactory
from tests.helpers import blob_path, digest_of
from tests.inprocess import InProcessServer
from tests.traffic import SOAK, Traffic, check_no_partial_blob, check_nothing_lost
from tests.upload_helpers import (
    MiB,
    bearer,
    call,
    create_upload,
    offset_of,
    patch,
    staged_bytes,
    upload_rows,
)


def crashing_server(factory: ServerFactory, point: str) -> CasdServer:
    return factory(env={"CASD_TEST_CRASH_AT": point})


async def crashed(server: CasdServer, *, whole_server: bool = True) -> None:
    """Wait for the worker to have killed itself at the crash point; then kill -9 the whole
    server and start it again without the hook (``whole_server``), or let the supervisor
    restart the worker alone (the hook stays set: the test does not reach the point again)."""
    for _ in range(300):
        if "killed by SIGKILL" in server.log():
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the worker did not die at the crash point:\n{server.log()}")
    if whole_server:
        await asyncio.to_thread(kill_server, server)
        server.env.pop("CASD_TEST_CRASH_AT")
        await asyncio.to_thread(server.start)
    else:
        await asyncio.to_thread(server.wait_ready, 30)


async def row_count(server: AnyServer, digest: str) -> int:
    connection = await server.connect_db()
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM blobs WHERE digest = $1", digest
        )
        return count
    finally:
        await connection.close()


async def blob_answer(http: aiohttp.ClientSession, server: AnyServer, digest: str) -> int:
    async with http.head(f"{server.url}/v1/blobs/{digest}") as response:
        return response.status


async def finish_upload_until_killed(
    http: aiohttp.ClientSession, server: CasdServer, data: bytes
) -> str:
    """An upload of ``data`` in two requests; the second, completing one, meets the crash."""
    token = server.admin_token
    url = await create_upload(http, server, token, data=data[: len(data) // 2])
    with contextlib.suppress(aiohttp.ClientError):
        await patch(http, url, token, len(data) // 2, data[len(data) // 2 :], complete=True)
        pytest.fail("the completing PATCH was answered although the server was to die")
    await crashed(server)
    return url


async def test_upload_killed_between_publish_and_commit_stays_resumable(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = crashing_server(casd_server_factory, "publish-before-commit")
    data = os.urandom(3 * MiB + 5)
    digest = digest_of(data)
    url = await finish_upload_until_killed(http, server, data)
    token = server.admin_token
    # The start adopted the complete file that the crash left without its row...
    assert await blob_answer(http, server, digest) == 200
    assert await row_count(server, digest) == 1
    # ...and the upload kept every byte: it finishes with an empty PATCH.
    status = await call(http, "HEAD", url, headers=bearer(token))
    assert status.status == 204, status
    assert status.headers["Upload-Complete"] == "?0"
    assert status.headers["Upload-Offset"] == str(len(data))
    done = await patch(http, url, token, len(data), b"", complete=True, Casd_Digest=digest)
    assert done.status == 201, done
    assert done.headers["Location"] == f"/v1/blobs/{digest}"
    async with http.get(f"{server.url}/v1/blobs/{digest}") as response:
        assert await response.read() == data
    assert list((server.data_dir / "staging").iterdir()) == []
    assert list((server.data_dir / "uploads").iterdir()) == []


async def test_upload_killed_between_commit_and_cleanup_answers_completed(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = crashing_server(casd_server_factory, "publish-before-settle")
    data = os.urandom(2 * MiB + 7)
    digest = digest_of(data)
    url = await finish_upload_until_killed(http, server, data)
    token = server.admin_token
    assert await blob_answer(http, server, digest) == 200
    status = await call(http, "HEAD", url, headers=bearer(token))
    assert status.status == 204, status
    assert status.headers["Upload-Complete"] == "?1"
    assert status.headers["Upload-Offset"] == str(len(data))
    assert status.headers["Location"] == f"/v1/blobs/{digest}"
    # The client whose final PATCH got no answer sends it again: the upload is complete.
    again = await patch(http, url, token, len(data) // 2, data[len(data) // 2 :], complete=True)
    assert again.status == 200, again
    assert again.headers["Location"] == f"/v1/blobs/{digest}"
    assert again.body == {"digest": digest, "size": len(data)}
    other = await patch(http, url, token, 0, b"", complete=True, Casd_Digest=digest_of(b"x"))
    assert other.status == 400 and other.body["code"] == "digest-mismatch"
    assert staged_bytes(server, url) is None, "the staged bytes went with the start"
    assert list((server.data_dir / "staging").iterdir()) == []
    # Deleting a completed upload forgets it; the blob stays.
    gone = await call(http, "DELETE", url, headers=bearer(token))
    assert gone.status == 204
    assert await upload_rows(server, completed=True) == {}
    assert await blob_answer(http, server, digest) == 200


@pytest.mark.parametrize("point", ["publish-before-commit", "publish-before-settle"])
async def test_put_killed_after_its_rename_is_adopted_at_start(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession, point: str
) -> None:
    server = crashing_server(casd_server_factory, point)
    data = os.urandom(MiB + 3)
    digest = digest_of(data)
    with contextlib.suppress(aiohttp.ClientError):
        async with http.put(
            f"{server.url}/v1/blobs/{digest}", data=data, headers=server.admin_headers
        ) as response:
            pytest.fail(f"answered {response.status} although the server was to die")
    await crashed(server, whole_server=False)  # the restarted worker adopts it
    assert await row_count(server, digest) == 1
    async with http.get(f"{server.url}/v1/blobs/{digest}") as response:
        assert response.status == 200
        assert await response.read() == data
    assert list((server.data_dir / "staging").iterdir()) == []


async def test_next_upload_adopts_a_file_without_a_row(
    http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(300_000)
    digest = digest_of(data)
    path = blob_path(http_server.data_dir, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)  # what a crash of a publisher leaves behind without the journal
    # With Expect: 100-continue the body is not even needed: the file is adopted.
    async with http.put(
        f"{http_server.url}/v1/blobs/{digest}",
        data=b"",
        headers=http_server.admin_headers | {"Expect": "100-continue", "Content-Length": "0"},
        expect100=True,
    ) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"digest": digest, "size": len(data)}
    assert await row_count(http_server, digest) == 1
    # A file that does not hash to its name is not adopted: the upload sends the bytes.
    other = os.urandom(1000)
    wrong = blob_path(http_server.data_dir, digest_of(other))
    wrong.parent.mkdir(parents=True, exist_ok=True)
    wrong.write_bytes(b"rot")
    async with http.put(
        f"{http_server.url}/v1/blobs/{digest_of(other)}",
        data=other,
        headers=http_server.admin_headers,
        expect100=True,
    ) as response:
        assert response.status == 201
    assert wrong.read_bytes() == other
    async with http.get(f"{http_server.url}/v1/blobs/{digest}") as response:
        assert await response.read() == data
    async with http.head(f"{http_server.url}/v1/blobs/{digest_of(b'nothing')}") as response:
        assert response.status == 404


def kill_server(server: CasdServer) -> None:
    """kill -9 of the whole server: the main process and every worker, at once."""
    assert server.process is not None
    main = psutil.Process(server.process.pid)
    for process in [main, *main.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    server.process.wait(30)


async def rows_by_status(server: AnyServer) -> dict[str, str]:
    connection = await server.connect_db()
    try:
        rows = await connection.fetch("SELECT digest, status FROM blobs")
    finally:
        await connection.close()
    return {row["digest"]: row["status"] for row in rows}


async def test_kill_9_under_traffic_loses_nothing_acknowledged(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory("--workers", "2")
    cycles = 30 if SOAK else 3
    async with Traffic(server.url, server.admin_token, clients=4) as traffic:
        for _ in range(cycles):
            await asyncio.sleep(random.uniform(0.5, 1.5))
            await asyncio.to_thread(kill_server, server)
            await asyncio.to_thread(server.start)
            check_no_partial_blob(server.data_dir)
        await asyncio.sleep(1.0)
    await asyncio.to_thread(kill_server, server)
    await asyncio.to_thread(server.start)
    ledger = traffic.ledger
    assert ledger.errors, "the kills met requests in flight"
    assert len(ledger.blobs) > cycles and ledger.flips
    await check_nothing_lost(http, server.url, ledger)
    # No file is left without its row (the start adopted what a kill left between the two)...
    on_disk = set(check_no_partial_blob(server.data_dir))
    rows = await rows_by_status(server)
    assert on_disk - set(rows) == set(), "files without a row after the start"
    assert {rows[digest] for digest in on_disk} <= {"ok"}
    # ...and no staging file, publication record or upload of a dead request stays behind.
    assert list((server.data_dir / "staging").iterdir()) == []
    print(f"{cycles} kills: {ledger.statuses}, {len(ledger.blobs)} blobs acknowledged")


# --- resumable uploads as segments (issue 11): kill -9 between the new steps -------------------


def segment_files(server: CasdServer) -> list[Path]:
    return sorted((server.data_dir / "uploads").rglob("*.*"))


async def test_killed_after_a_segment_was_written_before_it_was_recorded(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """The segment's bytes never count: the upload resumes at the recorded offset, and the
    unrecorded segment neither corrupts the blob nor stays behind."""
    server = crashing_server(casd_server_factory, "segment-before-record")
    token = server.admin_token
    data = os.urandom(2 * MiB + 1)
    url = await create_upload(http, server, token)  # no bytes: no segment, no crash
    with contextlib.suppress(aiohttp.ClientError):
        await patch(http, url, token, 0, data[:MiB])
        pytest.fail("the PATCH was answered although the server was to die")
    await crashed(server)
    assert [path.name for path in segment_files(server)] == ["2.0"], "written, not recorded"
    assert await offset_of(http, url, token) == 0
    done = await patch(http, url, token, 0, data, complete=True)
    assert done.status == 201, done
    async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
        assert await response.read() == data
    assert segment_files(server) == []


async def test_killed_after_the_segments_were_recorded_before_they_were_published(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = crashing_server(casd_server_factory, "upload-before-publish")
    data = os.urandom(3 * MiB + 1)
    digest = digest_of(data)
    url = await finish_upload_until_killed(http, server, data)
    token = server.admin_token
    assert await blob_answer(http, server, digest) == 404
    status = await call(http, "HEAD", url, headers=bearer(token))
    assert status.headers["Upload-Complete"] == "?0"
    assert status.headers["Upload-Offset"] == str(len(data))
    assert list((server.data_dir / "staging").iterdir()) == [], "the assembly was swept"
    done = await patch(http, url, token, len(data), b"", complete=True, Casd_Digest=digest)
    assert done.status == 201, done
    async with http.get(f"{server.url}/v1/blobs/{digest}") as response:
        assert await response.read() == data
    assert segment_files(server) == []


async def test_killed_after_publishing_before_the_segments_were_deleted(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = crashing_server(casd_server_factory, "upload-before-segments-deleted")
    data = os.urandom(2 * MiB + 3)
    digest = digest_of(data)
    url = await finish_upload_until_killed(http, server, data)
    token = server.admin_token
    status = await call(http, "HEAD", url, headers=bearer(token))
    assert status.headers["Upload-Complete"] == "?1"
    assert status.headers["Location"] == f"/v1/blobs/{digest}"
    async with http.get(f"{server.url}/v1/blobs/{digest}") as response:
        assert await response.read() == data
    assert segment_files(server) == [], "the start removed the segments of a complete upload"
