"""Blob endpoints against a real server: round trips, concurrency, bad input, HTTP semantics."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from tests.conftest import HttpServerFactory
from tests.helpers import blob_path, digest_of, problem_of, put_blob
from tests.inprocess import InProcessServer
from tests.integrity_helpers import metric_samples


def auth(server: InProcessServer) -> dict[str, str]:
    return server.admin_headers


async def stored_rows(server: InProcessServer) -> dict[str, int]:
    connection = await server.connect_db()
    try:
        rows = await connection.fetch("SELECT digest, size FROM blobs")
    finally:
        await connection.close()
    return {row["digest"]: row["size"] for row in rows}


def staging_files(server: InProcessServer) -> list[Path]:
    return list((server.data_dir / "staging").iterdir())


def blob_files(server: InProcessServer) -> list[Path]:
    return [path for path in (server.data_dir / "blobs").rglob("*") if path.is_file()]


async def test_small_round_trip(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = b"a small asset\n"
    digest = digest_of(data)
    url = f"{module_http_server.url}/v1/blobs/{digest}"
    async with http.put(url, data=data, headers=auth(module_http_server)) as response:
        assert response.status == 201
        assert response.headers["Location"] == f"/v1/blobs/{digest}"
        assert await response.json() == {"digest": digest, "size": len(data)}
    async with http.put(url, data=data, headers=auth(module_http_server)) as response:
        assert response.status == 200, "a second upload of the same content is not new"
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["ETag"] == f'"{digest}"'
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert await response.read() == data
    async with http.head(url) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(data))
        assert response.headers["ETag"] == f'"{digest}"'
    assert blob_path(module_http_server.data_dir, digest).read_bytes() == data


async def test_empty_blob(module_http_server: InProcessServer, http: aiohttp.ClientSession) -> None:
    status, body = await put_blob(http, module_http_server.url, module_http_server.admin_token, b"")
    assert status in (200, 201)
    assert body == {"digest": digest_of(b""), "size": 0}
    async with http.get(f"{module_http_server.url}/v1/blobs/{digest_of(b'')}") as response:
        assert response.status == 200
        assert await response.read() == b""


async def test_empty_bodies_never_hang_a_worker(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Regression: every empty body after the first one spun the worker forever (aiohttp#7616)."""
    empty = digest_of(b"")
    timeout = aiohttp.ClientTimeout(total=10)
    for _ in range(5):
        for method, url in (
            ("PUT", f"{module_http_server.url}/v1/blobs/{empty}"),
            ("POST", f"{module_http_server.url}/v1/blobs"),
        ):
            async with http.request(
                method, url, data=b"", headers=auth(module_http_server), timeout=timeout
            ) as response:
                assert response.status in (200, 201)
                assert await response.json() == {"digest": empty, "size": 0}
    async with http.get(f"{module_http_server.url}/healthz", timeout=timeout) as response:
        assert response.status == 200


async def test_post_computes_the_digest(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    async with http.post(
        f"{module_http_server.url}/v1/blobs", data=data, headers=auth(module_http_server)
    ) as response:
        assert response.status == 201
        assert response.headers["Location"] == f"/v1/blobs/{digest_of(data)}"
        assert await response.json() == {"digest": digest_of(data), "size": len(data)}
    assert blob_path(module_http_server.data_dir, digest_of(data)).read_bytes() == data


async def test_large_round_trip_streams(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """256 MiB up and down, checked against the blake3 package and the file on disk."""
    data = os.urandom(256 * 1024 * 1024)
    digest = digest_of(data)
    url = f"{module_http_server.url}/v1/blobs/{digest}"
    async with http.put(url, data=data, headers=auth(module_http_server)) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["size"] == len(data)
    async with http.get(url) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(data)
        received = await response.read()
    assert digest_of(received) == digest
    assert (await stored_rows(module_http_server))[digest] == len(data)
    assert blob_path(module_http_server.data_dir, digest).stat().st_size == len(data)


async def test_wrong_digest_stores_nothing(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data, claimed = os.urandom(2 * 1024 * 1024), digest_of(b"something else entirely")
    async with http.put(
        f"{module_http_server.url}/v1/blobs/{claimed}", data=data, headers=auth(module_http_server)
    ) as response:
        assert response.status == 400
        assert (await problem_of(response))["code"] == "digest-mismatch"
    rows = await stored_rows(module_http_server)
    assert claimed not in rows and digest_of(data) not in rows
    assert not blob_path(module_http_server.data_dir, claimed).exists()
    assert not blob_path(module_http_server.data_dir, digest_of(data)).exists()
    assert staging_files(module_http_server) == []


@pytest.mark.parametrize(
    "bad",
    [
        "xyz",
        "blake3:",
        "sha256:" + "a" * 64,
        "blake3:" + "A" * 64,
        "blake3:" + "a" * 63,
        "blake3:" + "a" * 65,
        "blake3:" + "g" * 64,
        "..%2F..%2Fetc%2Fpasswd",
        "blake3:..%2F..%2F" + "a" * 58,
    ],
)
async def test_invalid_digests(
    module_http_server: InProcessServer, http: aiohttp.ClientSession, bad: str
) -> None:
    url = f"{module_http_server.url}/v1/blobs/{bad}"
    for method in ("GET", "PUT"):
        async with http.request(
            method, url, data=b"x", headers=auth(module_http_server), allow_redirects=False
        ) as response:
            assert response.status == 400, (method, bad)
            assert (await problem_of(response))["code"] == "invalid-digest"


async def test_path_traversal_never_reaches_the_filesystem(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{module_http_server.url}/v1/blobs/../../admin.token") as response:
        assert response.status in (400, 404)
        assert module_http_server.admin_token not in await response.text()


async def test_unknown_blob(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    digest = digest_of(b"never uploaded")
    async with http.get(f"{module_http_server.url}/v1/blobs/{digest}") as response:
        assert response.status == 404
        assert (await problem_of(response))["code"] == "blob-not-found"
    async with http.head(f"{module_http_server.url}/v1/blobs/{digest}") as response:
        assert response.status == 404


async def test_upload_needs_a_token(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = b"anonymous upload"
    url = f"{module_http_server.url}/v1/blobs/{digest_of(data)}"
    for headers in ({}, {"Authorization": "Bearer casd_not-a-real-token"}, {"Authorization": "x"}):
        async with http.put(url, data=data, headers=headers) as response:
            assert response.status == 401
            assert (await problem_of(response))["code"] == "unauthorized"
    assert digest_of(data) not in await stored_rows(module_http_server)


@pytest.fixture(scope="module")
async def ranged_blob(module_http_server: InProcessServer) -> tuple[str, bytes]:
    data = bytes(range(256)) * 40  # 10240 bytes
    async with aiohttp.ClientSession() as session:
        await put_blob(session, module_http_server.url, module_http_server.admin_token, data)
    return digest_of(data), data


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, 10239),
        ("bytes=-1", 10239, 10239),
        ("bytes=-20000", 0, 10239),
        ("bytes=10000-99999", 10000, 10239),
        ("bytes=10239-10239", 10239, 10239),
    ],
)
async def test_ranges(
    module_http_server: InProcessServer,
    http: aiohttp.ClientSession,
    ranged_blob: tuple[str, bytes],
    header: str,
    first: int,
    last: int,
) -> None:
    digest, data = ranged_blob
    async with http.get(
        f"{module_http_server.url}/v1/blobs/{digest}", headers={"Range": header}
    ) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/10240"
        assert await response.read() == data[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-20001", "bytes=-0"])
async def test_unsatisfiable_ranges(
    module_http_server: InProcessServer,
    http: aiohttp.ClientSession,
    ranged_blob: tuple[str, bytes],
    header: str,
) -> None:
    digest, _ = ranged_blob
    async with http.get(
        f"{module_http_server.url}/v1/blobs/{digest}", headers={"Range": header}
    ) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == "bytes */10240"
        await problem_of(response)


@pytest.mark.parametrize("header", ["bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=abc"])
async def test_ranges_that_are_ignored(
    module_http_server: InProcessServer,
    http: aiohttp.ClientSession,
    ranged_blob: tuple[str, bytes],
    header: str,
) -> None:
    """Invalid or multiple ranges are ignored (RFC 9110 allows it): the whole blob comes back."""
    digest, data = ranged_blob
    async with http.get(
        f"{module_http_server.url}/v1/blobs/{digest}", headers={"Range": header}
    ) as response:
        assert response.status == 200
        assert await response.read() == data


async def test_if_none_match(
    module_http_server: InProcessServer, http: aiohttp.ClientSession, ranged_blob: tuple[str, bytes]
) -> None:
    digest, data = ranged_blob
    url = f"{module_http_server.url}/v1/blobs/{digest}"
    for header in (f'"{digest}"', f'"other", "{digest}"', "*"):
        async with http.get(url, headers={"If-None-Match": header}) as response:
            assert response.status == 304
            assert response.headers["ETag"] == f'"{digest}"'
            assert await response.read() == b""
    async with http.get(url, headers={"If-None-Match": '"blake3:other"'}) as response:
        assert response.status == 200
        assert await response.read() == data


def raw_request(port: int, head: bytes, body: bytes = b"", read_until_close: bool = False) -> bytes:
    """Send bytes on a plain socket; the answer, as far as it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or read_until_close:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


async def test_expect_continue_short_circuits_a_stored_blob(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(4096)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    head = (
        f"PUT /v1/blobs/{digest_of(data)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {module_http_server.admin_token}\r\n"
        f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    # No body is sent: the final answer must come without it.
    answer = await asyncio.to_thread(raw_request, module_http_server.port, head)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"100 Continue" not in answer


async def test_expect_continue_for_a_new_blob(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(4096)
    head = (
        f"PUT /v1/blobs/{digest_of(data)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {module_http_server.admin_token}\r\n"
        f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()

    def exchange() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", module_http_server.port), timeout=10) as sock:
            sock.sendall(head)
            interim = sock.recv(65536)
            sock.sendall(data)
            final = b""
            while b"}" not in final:
                final += sock.recv(65536)
            return interim, final

    interim, final = await asyncio.to_thread(exchange)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert final.startswith(b"HTTP/1.1 201 ")
    assert blob_path(module_http_server.data_dir, digest_of(data)).read_bytes() == data


async def test_unknown_expectation(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = b"expect something odd"
    async with http.put(
        f"{module_http_server.url}/v1/blobs/{digest_of(data)}",
        data=data,
        headers={**auth(module_http_server), "Expect": "teapot"},
    ) as response:
        assert response.status == 417
        await problem_of(response)


async def test_truncated_body_stores_nothing(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1024 * 1024)
    head = (
        f"PUT /v1/blobs/{digest_of(data)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {module_http_server.admin_token}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()

    def send_half_then_close_writing() -> bytes:
        with socket.create_connection(("127.0.0.1", module_http_server.port), timeout=10) as sock:
            sock.sendall(head + data[: len(data) // 2])
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    await asyncio.to_thread(send_half_then_close_writing)
    await assert_nothing_stored(module_http_server, digest_of(data))


async def test_client_abort_mid_upload_stores_nothing(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    head = (
        f"PUT /v1/blobs/{digest_of(data)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {module_http_server.admin_token}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()

    def send_part_then_vanish() -> None:
        sock = socket.create_connection(("127.0.0.1", module_http_server.port), timeout=10)
        sock.sendall(head + data[: 3 * 1024 * 1024])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST: the client is gone

    await asyncio.to_thread(send_part_then_vanish)
    await assert_nothing_stored(module_http_server, digest_of(data))


async def assert_nothing_stored(server: InProcessServer, digest: str) -> None:
    for _ in range(100):  # the server notices the broken connection asynchronously
        if not staging_files(server):
            break
        await asyncio.sleep(0.05)
    assert staging_files(server) == []
    assert not blob_path(server.data_dir, digest).exists()
    assert digest not in await stored_rows(server)
    async with (
        aiohttp.ClientSession() as session,
        session.head(f"{server.url}/v1/blobs/{digest}") as response,
    ):
        assert response.status == 404


async def test_concurrent_uploads_of_the_same_content(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    digest = digest_of(data)
    results = await asyncio.gather(
        *(
            put_blob(http, module_http_server.url, module_http_server.admin_token, data)
            for _ in range(50)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert set(statuses) <= {200, 201} and 201 in statuses
    assert statuses.count(201) == 1, "exactly one upload created the blob"
    assert all(body == {"digest": digest, "size": len(data)} for _, body in results)
    assert blob_path(module_http_server.data_dir, digest).read_bytes() == data
    assert (await stored_rows(module_http_server))[digest] == len(data)
    assert staging_files(module_http_server) == []


async def test_concurrent_uploads_of_different_content(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    blobs = [os.urandom(64 * 1024 + n) for n in range(50)]
    results = await asyncio.gather(
        *(
            put_blob(http, module_http_server.url, module_http_server.admin_token, data)
            for data in blobs
        )
    )
    assert [status for status, _ in results] == [201] * 50
    rows = await stored_rows(module_http_server)
    for data in blobs:
        digest = digest_of(data)
        assert rows[digest] == len(data)
        assert digest_of(blob_path(module_http_server.data_dir, digest).read_bytes()) == digest
    assert staging_files(module_http_server) == []


async def test_announced_size_over_the_limit(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory(env={"CASD_MAX_BLOB_SIZE": "1M"})
    small = os.urandom(1000)
    assert (await put_blob(http, server.url, server.admin_token, small))[0] == 201
    big = os.urandom(2 * 1024 * 1024)
    async with http.put(
        f"{server.url}/v1/blobs/{digest_of(big)}", data=big, headers=server.admin_headers
    ) as response:
        assert response.status == 413
        assert (await problem_of(response))["code"] == "payload-too-large"

    async def chunked_body() -> object:
        for offset in range(0, len(big), 256 * 1024):
            yield big[offset : offset + 256 * 1024]

    # Without Content-Length the limit applies as soon as the stream passes it.
    try:
        async with http.post(
            f"{server.url}/v1/blobs", data=chunked_body(), headers=server.admin_headers
        ) as response:
            assert response.status == 413
            assert (await problem_of(response))["code"] == "payload-too-large"
    except aiohttp.ClientOSError:
        pass  # the server may close the connection while the client is still sending
    await assert_nothing_stored(server, digest_of(big))
    assert await stored_rows(server) == {digest_of(small): 1000}


async def test_full_disk_gives_507_and_stores_nothing(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "small-disk"
    data_dir.mkdir()
    mounted = await asyncio.create_subprocess_exec(
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=16m",
        "tmpfs",
        str(data_dir),
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await mounted.wait() != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); CI runs as root")
    try:
        server = http_server_factory(data_dir=data_dir)
        too_big = os.urandom(24 * 1024 * 1024)
        async with http.put(
            f"{server.url}/v1/blobs/{digest_of(too_big)}",
            data=too_big,
            headers=server.admin_headers,
        ) as response:
            assert response.status == 507
            assert (await problem_of(response))["code"] == "insufficient-storage"
        await assert_nothing_stored(server, digest_of(too_big))
        # The space was given back: a blob that fits is stored.
        fits = os.urandom(1024 * 1024)
        assert (await put_blob(http, server.url, server.admin_token, fits))[0] == 201
        server.stop()
    finally:
        await (await asyncio.create_subprocess_exec("umount", "-l", str(data_dir))).wait()


async def test_readyz_reports_a_lost_database(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession, postgres_url: str
) -> None:
    server = http_server_factory()
    assert server.database_url is not None
    database = urlsplit(server.database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
        )
        async with http.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            assert (await problem_of(response))["code"] == "unavailable"
        data = b"written while the database is away"
        async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
            assert response.status == 503
            assert (await problem_of(response))["code"] == "unavailable"
        async with http.put(
            f"{server.url}/v1/blobs/{digest_of(data)}", data=data, headers=server.admin_headers
        ) as response:
            assert response.status == 503
            assert (await problem_of(response))["code"] == "unavailable"
        assert staging_files(server) == [] and blob_files(server) == []
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        for _ in range(50):
            async with http.get(f"{server.url}/readyz") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert response.status == 200, "the server recovers when the database comes back"
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


async def test_blob_whose_file_vanished_is_not_served(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(10_000)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    blob_path(module_http_server.data_dir, digest_of(data)).unlink()
    async with http.get(f"{module_http_server.url}/v1/blobs/{digest_of(data)}") as response:
        assert response.status == 404
        assert (await problem_of(response))["code"] == "blob-not-found"


async def test_blob_whose_file_shrank_is_quarantined(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(10_000)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    path = blob_path(module_http_server.data_dir, digest_of(data))
    path.write_bytes(data[:5000])
    for _ in range(2):
        async with http.get(f"{module_http_server.url}/v1/blobs/{digest_of(data)}") as response:
            assert response.status == 410
            assert (await problem_of(response))["code"] == "blob-quarantined"
    assert not path.exists()


async def test_metrics_count_uploads_and_downloads(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    before = await metric_samples(http, module_http_server)
    data = os.urandom(300_000)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    await put_blob(http, module_http_server.url, module_http_server.admin_token, data)
    async with http.get(f"{module_http_server.url}/v1/blobs/{digest_of(data)}") as response:
        assert await response.read() == data
    after = await metric_samples(http, module_http_server)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0)

    assert grew("casd_blobs_created_total") == 1
    assert grew("casd_blob_bytes_received_total") == 2 * len(data)
    assert grew("casd_blob_bytes_sent_total") == len(data)
    assert after['casd_stored_blobs{status="ok"}'] >= 1
