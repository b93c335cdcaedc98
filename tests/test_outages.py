"""A database that stops answering and a blob store whose disk is full (issue 9, defects 4
and 5): requests answer 503 within CASD_DB_TIMEOUT, /readyz says what is wrong, nothing
acknowledged is lost, and casd recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from casd.config import metrics_dir_of
from tests.conftest import CasdServer, ServerFactory
from tests.helpers import digest_of, problem_of, put_blob
from tests.traffic import SOAK, Traffic, check_nothing_lost

DB_TIMEOUT = 1.0
# Every request answers within this while the database hangs: one wait for a connection or
# a statement (DB_TIMEOUT), a second one for a request that reached the database twice, and
# scheduling slack on a busy 2-core machine.
BOUND = 2 * DB_TIMEOUT + 2.5


def cluster_processes(server: CasdServer) -> list[psutil.Process]:
    """The embedded PostgreSQL of ``server``: its postmaster and every child of it."""
    pid = int((server.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


@contextlib.contextmanager
def hung_database(server: CasdServer) -> Iterator[None]:
    """SIGSTOP every PostgreSQL process of the server (it stops answering, connections stay
    open), SIGCONT on the way out."""
    processes = cluster_processes(server)
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


async def timed(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with http.request(method, url, **kwargs) as response:
        body = await problem_of(response) if response.status >= 400 else {}
        return response.status, body, time.monotonic() - started


async def wait_ready(http: aiohttp.ClientSession, server: CasdServer, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{server.url}/readyz") as response:
                if response.status == 200:
                    return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"casd not ready {seconds}s after the database came back")


@pytest.fixture
def embedded_server(casd_server_factory: ServerFactory) -> CasdServer:
    return casd_server_factory(embedded=True, env={"CASD_DB_TIMEOUT": f"{DB_TIMEOUT}s"})


async def test_hung_database_answers_503_in_bounded_time(
    embedded_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    server = embedded_server
    stored = os.urandom(5000)
    assert (await put_blob(http, server.url, server.admin_token, stored))[0] == 201
    auth = server.admin_headers
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/readyz", {}),
        ("GET", f"/v1/blobs/{digest_of(stored)}", {}),
        ("GET", "/v1/names/some/name", {}),
        ("PUT", f"/v1/blobs/{digest_of(b'new')}", {"data": b"new", "headers": auth}),
        ("POST", "/v1/uploads", {"data": b"abc", "headers": auth}),
        (
            "PUT",
            "/v1/names/some/name",
            {"json": {"digest": digest_of(stored)}, "headers": auth | {"If-None-Match": "*"}},
        ),
    ]
    with hung_database(server):
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200, "the process itself still answers"
        # Many at once: more than the pool has connections.
        outcomes = await asyncio.gather(
            *(
                timed(http, method, server.url + path, **kwargs)
                for method, path, kwargs in requests * 5
            )
        )
        for (method, path, _), (status, body, seconds) in zip(requests * 5, outcomes, strict=True):
            assert status == 503, (method, path, status, body)
            assert body["code"] == "unavailable"
            assert seconds < BOUND, (method, path, seconds)
        status, body, _ = await timed(http, "GET", f"{server.url}/readyz")
        assert status == 503 and body["checks"]["database"] != "ok", body
        assert body["checks"]["blob_store"] == "ok"
    recovered = await wait_ready(http, server, 15)
    assert (await put_blob(http, server.url, server.admin_token, b"new"))[0] == 201
    async with http.get(f"{server.url}/v1/blobs/{digest_of(stored)}") as response:
        assert await response.read() == stored
    print(f"ready again {recovered:.2f}s after the database answered again")


async def test_database_outages_under_traffic_lose_nothing(
    embedded_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    server = embedded_server
    cycles = 12 if SOAK else 2
    async with Traffic(server.url, server.admin_token, clients=4) as traffic:
        for _ in range(cycles):
            await asyncio.sleep(1.0)
            with hung_database(server):
                await asyncio.sleep(2 * DB_TIMEOUT)
            await asyncio.sleep(0.5)
            # Connections dropped under the server's feet (a restart of PostgreSQL, as seen
            # from casd) as well.
            for process in cluster_processes(server)[1:]:
                if "idle" in " ".join(process.cmdline()):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.terminate()
    ledger = traffic.ledger
    assert await wait_ready(http, server, 15) < 15
    assert set(ledger.statuses) <= {200, 201, 404, 412, 503}, ledger.statuses
    assert ledger.statuses.get(503), "the outages were seen"
    assert ledger.slowest < BOUND + 2, ledger.slowest
    assert len(ledger.blobs) > 5 and ledger.flips
    await check_nothing_lost(http, server.url, ledger)
    print(f"{cycles} outages: {ledger.statuses}, {len(ledger.blobs)} blobs acknowledged")


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[None]:
    directory.mkdir()
    if os.system(f"mount -t tmpfs -o size={size} tmpfs {directory} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); CI runs as root")
    try:
        yield
    finally:
        os.system(f"umount -l {directory}")


def fill_completely(filler: Path) -> None:
    """Write to ``filler`` until its disk has no byte left."""
    with filler.open("wb", buffering=0) as file:
        for size in (1024 * 1024, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    file.write(bytes(size))
    assert os.statvfs(filler).f_bavail == 0


async def test_readyz_reports_a_full_blob_store_while_reads_work(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data_dir = tmp_path / "small-disk"
    with small_disk(data_dir, "16m"):
        server = casd_server_factory(data_dir=data_dir)
        stored = os.urandom(1024 * 1024)
        assert (await put_blob(http, server.url, server.admin_token, stored))[0] == 201
        status, body, _ = await timed(http, "GET", f"{server.url}/readyz")
        assert status == 200
        # Completely full: not one byte more fits. Workers keep their memory-mapped metric
        # files off this disk, so they live on (a write to a mapped page would be a SIGBUS).
        filler = data_dir / "filler"
        fill_completely(filler)
        status, body, _ = await timed(http, "GET", f"{server.url}/readyz")
        assert status == 503, body
        assert body["state"] == "degraded"
        assert body["checks"] == {
            "database": "ok",
            "blob_store": "full: uploads are refused (507), reads still work",
        }
        for _ in range(8):  # on fresh connections, so through every worker
            async with http.get(
                f"{server.url}/v1/blobs/{digest_of(stored)}", headers={"Connection": "close"}
            ) as response:
                assert response.status == 200 and await response.read() == stored
            status, _ = await put_blob(http, server.url, server.admin_token, os.urandom(256 * 1024))
            assert status == 507
            async with http.get(f"{server.url}/metrics", headers={"Connection": "close"}) as got:
                assert got.status == 200
        filler.unlink()
        status, body, _ = await timed(http, "GET", f"{server.url}/readyz")
        assert status == 200, body
        assert "restarting it" not in server.log(), "no worker died"
        metric_files = metrics_dir_of(data_dir, server.port)
        assert any(metric_files.iterdir()) and data_dir not in metric_files.parents
        assert server.stop() == 0
        assert not metric_files.exists(), "removed when casd stops"
