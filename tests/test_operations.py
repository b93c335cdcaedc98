"""Operations: supervised workers, metrics over all workers, JSON log lines, client aborts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil

from tests.conftest import CasdServer, ServerFactory, create_database
from tests.helpers import digest_of, put_blob
from tests.ops_helpers import (
    Samples,
    is_cumulative,
    log_entries,
    process_title,
    scrape,
    total,
    wait_for_log,
    wait_for_workers,
    workers_of,
)


def fresh_connections() -> aiohttp.ClientSession:
    """Every request on a new connection, so that requests spread over the workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def answering_pids(server: CasdServer, path: str) -> set[int]:
    return {
        entry["pid"]
        for entry in log_entries(server)
        if entry["logger"] == "casd.access" and entry["path"] == path
    }


async def test_serving_line_comes_when_workers_accept_connections(
    casd_server_factory: ServerFactory,
) -> None:
    server = casd_server_factory("--workers", "2")
    serving = await wait_for_log(server, lambda entry: "casd serving on" in entry["message"])
    assert serving[0]["logger"] == "casd.server"
    workers = wait_for_workers(server, 2)
    started = [entry for entry in log_entries(server) if "upload leases" in entry["message"]]
    assert {entry["pid"] for entry in started} == {worker.pid for worker in workers.values()}
    assert all(entry["time"] <= serving[0]["time"] for entry in started), "workers first"
    titles = {process_title(worker) for worker in workers.values()}
    assert titles == {f"casd serve: 127.0.0.1:{server.port} worker {n}" for n in (1, 2)}
    assert server.process is not None
    assert process_title(psutil.Process(server.process.pid)).startswith(
        f"casd serve: supervisor 127.0.0.1:{server.port}"
    )


async def test_killed_worker_comes_back_and_the_server_keeps_serving(
    casd_server_factory: ServerFactory,
) -> None:
    server = casd_server_factory("--workers", "2")
    await wait_for_log(server, lambda entry: "casd serving on" in entry["message"])
    victim = wait_for_workers(server, 2)[1]
    victim.kill()
    victim.wait(10)
    answered = 0
    async with fresh_connections() as session:
        # The other worker answers while the killed one comes back.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with session.get(f"{server.url}/healthz") as response:
                assert response.status == 200
                answered += 1
            replacement = workers_of(server).get(1)
            if replacement is not None and replacement.pid != victim.pid:
                break
        await wait_for_log(server, lambda entry: "serves again" in entry["message"])
        assert answered > 0
        restarted = wait_for_workers(server, 2)[1]
        assert restarted.pid != victim.pid
        [warning] = [entry for entry in log_entries(server) if entry["level"] == "WARNING"]
        assert f"worker 1 (pid {victim.pid}) was killed by SIGKILL" in warning["message"]
        # Both workers serve uploads and reads again.
        for _ in range(20):
            blobs = [os.urandom(20_000) for _ in range(10)]
            results = await asyncio.gather(
                *(put_blob(session, server.url, server.admin_token, data) for data in blobs)
            )
            assert [status for status, _ in results] == [201] * 10
            if restarted.pid in answering_pids(server, f"/v1/blobs/{digest_of(blobs[0])}"):
                break
            await asyncio.sleep(0.05)
        uploaders = {
            entry["pid"]
            for entry in log_entries(server)
            if entry["logger"] == "casd.access" and entry["method"] == "PUT"
        }
        assert restarted.pid in uploaders, "the new worker answers"
    assert server.process is not None and server.process.poll() is None
    assert server.stop() == 0


async def test_workers_that_keep_failing_stop_the_server_with_status_1(
    casd_server_factory: ServerFactory, postgres_url: str
) -> None:
    server = casd_server_factory("--workers", "2", "--worker-restarts", "2")
    assert server.database_url is not None and server.process is not None
    database = urlsplit(server.database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_url)
    try:
        # New workers cannot reach their database: every restart fails at once.
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        workers = wait_for_workers(server, 2)
        for worker in workers.values():
            worker.kill()
        status = await asyncio.to_thread(server.process.wait, 60)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert status == 1, server.log()
    entries = log_entries(server)
    [critical] = [entry for entry in entries if entry["level"] == "CRITICAL"]
    assert "cannot keep its workers up" in critical["message"]
    delays = [entry["message"] for entry in entries if "restarting it in" in entry["message"]]
    assert any("in 0.25 s" in delay for delay in delays)
    assert any("in 0.50 s" in delay for delay in delays), "the delay doubles"
    failed = [entry for entry in entries if entry["message"].startswith("worker ")]
    assert any("failed" in entry["message"] and "exception" in entry for entry in failed)
    assert entries[-1]["message"] == "casd stopped with status 1"
    assert not any(worker.is_running() for worker in workers.values())


async def test_workers_die_with_a_killed_supervisor(casd_server_factory: ServerFactory) -> None:
    """kill -9 of casd leaves no worker serving its port: a new casd can start on it."""
    server = casd_server_factory("--workers", "2")
    workers = wait_for_workers(server, 2)
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    _gone, alive = psutil.wait_procs(list(workers.values()), timeout=10)
    assert not alive, "workers outlived their supervisor"
    server.start()
    assert len(wait_for_workers(server, 2)) == 2


def test_a_server_that_cannot_start_says_why_in_json(
    casd_server_factory: ServerFactory, postgres_url: str
) -> None:
    missing = f"{postgres_url.split('?')[0].rsplit('/', 1)[0]}/casd_no_such_database?"
    server = casd_server_factory(database_url=missing + postgres_url.split("?", 1)[1], start=False)
    result = subprocess.run(
        [*server.command("serve"), "--listen", f"127.0.0.1:{server.port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    [critical] = [entry for entry in entries if entry["level"] == "CRITICAL"]
    assert "casd cannot serve" in critical["message"]
    assert entries[-1]["message"] == "casd stopped with status 1"


async def traffic(server: CasdServer, count: int) -> list[bytes]:
    """``count`` new blobs uploaded and read back over fresh connections, 8 at a time."""
    blobs = [os.urandom(10_000 + n) for n in range(count)]
    async with fresh_connections() as session:
        for start in range(0, count, 8):
            batch = blobs[start : start + 8]
            results = await asyncio.gather(
                *(put_blob(session, server.url, server.admin_token, data) for data in batch)
            )
            assert [status for status, _ in results] == [201] * len(batch)
            for data in batch:
                async with session.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
                    assert await response.read() == data
    return blobs


@contextlib.asynccontextmanager
async def scraping(server: CasdServer, scrapes: list[Samples]) -> AsyncIterator[None]:
    """Scrapes /metrics on fresh connections (so from either worker) while the body runs."""
    stop = asyncio.Event()

    async def scrape_until_stopped() -> None:
        async with fresh_connections() as session:
            for _ in range(2000):
                if stop.is_set():
                    return
                with contextlib.suppress(aiohttp.ClientError):  # a worker being killed
                    scrapes.append(await scrape(session, server))
                await asyncio.sleep(0.01)

    task = asyncio.ensure_future(scrape_until_stopped())
    try:
        yield
    finally:
        stop.set()
        await task


async def test_metrics_add_up_over_all_workers_and_never_decrease(
    casd_server_factory: ServerFactory,
) -> None:
    server = casd_server_factory("--workers", "2")
    scrapes: list[Samples] = []
    async with scraping(server, scrapes):
        first = await traffic(server, 40)
        victim = wait_for_workers(server, 2)[1]
        victim.kill()
        await wait_for_log(server, lambda entry: "serves again" in entry["message"])
        second = await traffic(server, 40)
    async with fresh_connections() as session:
        scrapes.append(await scrape(session, server))
    assert len(scrapes) >= 10
    for number, (before, after) in enumerate(itertools.pairwise(scrapes)):
        for key, value in before.items():
            if is_cumulative(key[0]):
                assert after.get(key, -1) >= value, f"scrape {number + 1}: {key} went back"
    scrapers = answering_pids(server, "/metrics")
    assert len(scrapers) >= 2, "scrapes were answered by several workers"
    final = scrapes[-1]
    blobs = first + second
    # Every request is counted once, whichever worker answered it, the killed one included.
    assert total(final, "casd_http_requests_total", method="PUT", status="201") == 80
    assert total(final, "casd_http_requests_total", method="GET", status="200") >= 80
    assert total(final, "casd_blobs_created_total") == 80
    assert total(final, "casd_blob_bytes_received_total") == sum(len(data) for data in blobs)
    assert total(final, "casd_worker_exits_total") == 1
    assert total(final, "casd_http_request_seconds_count", method="PUT") == 80
    put_sizes = total(final, "casd_http_request_received_bytes_sum", method="PUT")
    assert put_sizes == sum(len(data) for data in blobs)
    # A 64 GiB transfer still falls into a bucket of its own.
    buckets = {
        float(dict(labels)["le"])
        for (name, labels), _ in final.items()
        if name == "casd_http_request_sent_bytes_bucket"
    }
    assert 64 << 30 in buckets
    seconds = {
        float(dict(labels)["le"])
        for (name, labels), _ in final.items()
        if name == "casd_http_request_seconds_bucket"
    }
    assert 3600 in seconds


async def test_in_flight_uploads_and_staged_bytes_cover_all_workers(
    casd_server_factory: ServerFactory,
) -> None:
    server = casd_server_factory("--workers", "2")
    data = os.urandom(4 << 20)
    release = asyncio.Event()

    async def stalled_body() -> AsyncIterator[bytes]:
        for offset in range(0, 3 << 20, 1 << 20):
            yield data[offset : offset + (1 << 20)]
        await release.wait()
        yield data[3 << 20 :]

    async with fresh_connections() as session:
        upload = asyncio.ensure_future(
            session.put(
                f"{server.url}/v1/blobs/{digest_of(data)}",
                data=stalled_body(),
                headers=server.admin_headers,
            )
        )
        seen: list[Samples] = []
        for _ in range(400):
            samples = await scrape(session, server)
            staged = total(samples, "casd_staged_bytes", area="staging")
            if total(samples, "casd_uploads_in_flight") == 1 and staged >= 1 << 20:
                seen.append(samples)
            if len(seen) >= 4 and len(answering_pids(server, "/metrics")) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(seen) >= 4
        assert len(answering_pids(server, "/metrics")) >= 2, "both workers see the upload"
        assert all(total(samples, "casd_staged_files", area="staging") == 1 for samples in seen)
        release.set()
        async with await upload as response:
            assert response.status == 201
        after = await scrape(session, server)
        assert total(after, "casd_uploads_in_flight") == 0
        assert total(after, "casd_staged_bytes", area="staging") == 0
        # A paused resumable upload keeps its bytes staged.
        async with session.post(
            f"{server.url}/v1/uploads",
            data=data[:100_000],
            headers={**server.admin_headers, "Upload-Complete": "?0"},
        ) as response:
            assert response.status == 201, await response.text()
        paused = await scrape(session, server)
        assert total(paused, "casd_staged_bytes", area="uploads") == 100_000
        assert total(paused, "casd_staged_files", area="uploads") == 1


async def aborted_get(server: CasdServer, digest: str) -> None:
    """Read the start of a large blob, then close the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /v1/blobs/{digest} HTTP/1.1\r\nHost: casd\r\n\r\n".encode())
    await reader.readexactly(256 * 1024)
    writer.transport.abort()


async def aborted_put(server: CasdServer) -> None:
    """Announce 8 MiB, send 1 MiB, then close the connection."""
    data = os.urandom(1 << 20)
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"PUT /v1/blobs/{digest_of(data)} HTTP/1.1\r\nHost: casd\r\n"
        f"Authorization: Bearer {server.admin_token}\r\nContent-Length: {8 << 20}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def aborted_patch(server: CasdServer, session: aiohttp.ClientSession) -> None:
    """A resumable upload's PATCH that announces 8 MiB and closes after 1 MiB."""
    async with session.post(f"{server.url}/v1/uploads", headers=server.admin_headers) as response:
        assert response.status == 201
        location = response.headers["Location"]
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: casd\r\nUpload-Offset: 0\r\n"
        f"Authorization: Bearer {server.admin_token}\r\nContent-Length: {8 << 20}\r\n\r\n"
    )
    writer.write(head.encode() + os.urandom(1 << 20))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def mixed_traffic(server: CasdServer, session: aiohttp.ClientSession) -> None:
    headers = server.admin_headers
    data = os.urandom(100_000)
    digest = digest_of(data)
    assert (await put_blob(session, server.url, server.admin_token, data))[0] == 201
    requests = [
        ("GET", f"/v1/blobs/{digest}", {}, None),
        ("HEAD", f"/v1/blobs/{digest}", {}, None),
        ("GET", f"/v1/blobs/{digest}", {"Range": "bytes=0-9"}, None),
        ("GET", f"/v1/blobs/{digest_of(b'absent')}", {}, None),
        ("GET", "/v1/blobs/casd_notatokenbutlookslikeone", {}, None),
        ("POST", "/v1/blobs", headers, b"posted"),
        ("PUT", f"/v1/blobs/{digest}", {"Authorization": "Bearer casd_wrong"}, data),
        ("PUT", "/v1/names/ops/x", {**headers, "If-None-Match": "*"}, f'{{"digest": "{digest}"}}'),
        ("GET", "/v1/names/ops/x", {}, None),
        ("GET", "/v1/history/ops/x", {}, None),
        ("POST", "/v1/uploads", {**headers, "Upload-Complete": "?0"}, b"12345"),
        ("GET", "/nowhere", {}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/metrics", {}, None),
    ]
    for method, path, request_headers, body in requests:
        async with session.request(
            method, f"{server.url}{path}", headers=request_headers, data=body
        ) as response:
            await response.read()
            assert response.status < 500, (method, path, response.status)


async def test_every_log_line_is_json_and_client_aborts_are_499(
    casd_server_factory: ServerFactory, postgres_url: str
) -> None:
    # A database not migrated yet: the start logs every migration it applies, too.
    server = casd_server_factory("--workers", "2", database_url=create_database(postgres_url))
    big = os.urandom(32 << 20)
    async with fresh_connections() as session:
        assert (await put_blob(session, server.url, server.admin_token, big))[0] == 201
        await mixed_traffic(server, session)
        await aborted_get(server, digest_of(big))
        await aborted_put(server)
        await aborted_patch(server, session)
        aborted = await wait_for_log(
            server, lambda entry: entry.get("status") == 499 and entry["method"] == "PUT"
        )
        aborted += await wait_for_log(
            server, lambda entry: entry.get("status") == 499 and entry["method"] == "GET"
        )
        aborted += await wait_for_log(
            server, lambda entry: entry.get("status") == 499 and entry["method"] == "PATCH"
        )
        samples = await scrape(session, server)
    assert server.stop() == 0
    entries = log_entries(server)  # every line parses as one JSON object
    assert len(entries) > 30
    for entry in entries:
        assert {"time", "level", "logger", "pid", "message"} <= entry.keys()
    put, get, patch = aborted
    assert 1 << 20 <= put["bytes_received"] < 8 << 20
    assert 1 << 20 <= patch["bytes_received"] < 8 << 20
    assert 256 * 1024 <= get["bytes_sent"] < len(big)
    access = [entry for entry in entries if entry["logger"] == "casd.access"]
    assert all(
        {"bytes_received", "bytes_sent", "seconds", "status", "route"} <= entry.keys()
        for entry in access
    )
    assert not [entry for entry in entries if entry["level"] in ("ERROR", "CRITICAL")]
    assert total(samples, "casd_http_requests_total", status="499") == 3
    assert total(samples, "casd_http_requests_total", status="500") == 0
    log = server.log()
    assert server.admin_token not in log and "casd_wrong" not in log
    assert "casd_notatokenbutlookslikeone" not in log, "token-like text is redacted"


async def test_plain_text_log_for_terminals(casd_server_factory: ServerFactory) -> None:
    server = casd_server_factory(env={"CASD_LOG_FORMAT": "text"})
    async with fresh_connections() as session, session.get(f"{server.url}/healthz") as response:
        assert response.status == 200
    assert server.stop() == 0
    lines = server.log().splitlines()
    assert any(" INFO casd.server: casd serving on " in line for line in lines)
    assert any(" INFO casd.access: GET /healthz 200 " in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
