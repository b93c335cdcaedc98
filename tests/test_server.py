"""The server process: embedded PostgreSQL, restarts, workers, migrations, first start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest

from casd.database import migrate
from casd.embedded import SOCKET_FALLBACK, EmbeddedPostgres
from casd.sqlfiles import migrations
from tests.conftest import CasdServer, ServerFactory, create_database
from tests.helpers import blob_path, digest_of, put_blob
from tests.inprocess import InProcessServer


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(data_dir) in arg for arg in cmdline):
            found.append(process)
    return found


async def test_embedded_database_survives_restart(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory(embedded=True)
    token = server.admin_token
    assert stat.S_IMODE((server.data_dir / "admin.token").stat().st_mode) == 0o600
    blobs = [os.urandom(100_000 + n) for n in range(5)]
    for data in blobs:
        assert (await put_blob(http, server.url, token, data))[0] == 201
    pg_version = (server.data_dir / "postgres" / "PG_VERSION").stat().st_mtime

    assert server.stop() == 0, server.log()
    assert postgres_processes(server.data_dir) == [], "SIGTERM stops the embedded PostgreSQL"
    server.start()

    assert server.admin_token == token, "the admin token is created only on the first start"
    assert (server.data_dir / "postgres" / "PG_VERSION").stat().st_mtime == pg_version
    for data in blobs:
        async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
            assert response.status == 200
            assert await response.read() == data
        # Re-uploading finds the blob in the reused database.
        assert (await put_blob(http, server.url, token, data))[0] == 200


async def test_admin_commands_share_a_running_embedded_database(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory(embedded=True)
    created = server.run_cli("token", "create", "--write", "jobs/1")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    # The CLI left the server's PostgreSQL running: the new token works at once.
    data = b"uploaded with a CLI-made token"
    assert (await put_blob(http, server.url, secret, data))[0] == 201
    assert server.stop() == 0
    # And with no server running, the CLI starts and stops the database itself.
    listed = server.run_cli("token", "list")
    assert listed.returncode == 0, listed.stderr
    assert "jobs/1" in listed.stdout
    assert postgres_processes(server.data_dir) == []


def access_log_pids(server: CasdServer, method: str) -> set[int]:
    """The process ids that logged answers to ``method`` requests."""
    entries = [json.loads(line) for line in server.log().splitlines()]
    return {
        entry["pid"]
        for entry in entries
        if entry["logger"] == "casd.access" and entry["method"] == method
    }


async def test_two_workers_share_port_and_database(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory("--workers", "2")
    assert server.process is not None
    workers = [
        child
        for child in psutil.Process(server.process.pid).children()
        if " worker " in " ".join(child.cmdline())
    ]
    assert len(workers) == 2
    blobs = [os.urandom(50_000 + n) for n in range(40)]
    connector = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
    async with aiohttp.ClientSession(connector=connector) as fresh:
        # /readyz answered once; the other worker may still be starting.
        for _ in range(300):
            if len(access_log_pids(server, "GET")) == 2:
                break
            async with fresh.get(f"{server.url}/healthz") as response:
                assert response.status == 200
        assert len(access_log_pids(server, "GET")) == 2, "both workers serve"
        results = await asyncio.gather(
            *(put_blob(fresh, server.url, server.admin_token, data) for data in blobs)
        )
        assert [status for status, _ in results] == [201] * 40
        for data in blobs:
            async with fresh.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
                assert await response.read() == data
    assert len(access_log_pids(server, "PUT")) == 2, "both workers answered uploads"
    assert server.stop() == 0
    assert not any(worker.is_running() for worker in workers), "workers stop with the server"


async def test_stale_staging_files_are_removed_on_start(
    http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = http_server
    stale = server.data_dir / "staging" / "left-by-a-crash.part"
    stale.write_bytes(b"half an upload")
    server.restart()
    assert not stale.exists()
    assert list((server.data_dir / "blobs").rglob("*.part")) == []


async def test_killed_server_leaves_no_visible_partial_blob(
    casd_server_factory: ServerFactory,
) -> None:
    """kill -9 during an upload: after restart the staging file is gone, nothing is published."""
    server = casd_server_factory()
    data = os.urandom(64 * 1024 * 1024)
    digest = digest_of(data)

    async def slow_body() -> object:
        for offset in range(0, len(data), 1024 * 1024):
            yield data[offset : offset + 1024 * 1024]
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        upload = asyncio.ensure_future(
            session.put(
                f"{server.url}/v1/blobs/{digest}", data=slow_body(), headers=server.admin_headers
            )
        )
        for _ in range(200):
            if list((server.data_dir / "staging").iterdir()):
                break
            await asyncio.sleep(0.02)
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        with contextlib.suppress(aiohttp.ClientError):
            await upload
    server.start()
    assert list((server.data_dir / "staging").iterdir()) == []
    assert not blob_path(server.data_dir, digest).exists()
    connection = await server.connect_db()
    try:
        assert (
            await connection.fetchval("SELECT count(*) FROM blobs WHERE digest = $1", digest) == 0
        )
    finally:
        await connection.close()


async def test_migrations_are_recorded_and_race_free(postgres_url: str) -> None:
    url = create_database(postgres_url)
    results = await asyncio.gather(*(migrate(url) for _ in range(4)))
    every = [version for applied in results for version in applied]
    assert sorted(every) == [migration.version for migration in migrations()]
    connection = await asyncpg.connect(url)
    try:
        recorded = await connection.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
    finally:
        await connection.close()
    assert [(row["version"], row["name"]) for row in recorded] == [
        (migration.version, migration.name) for migration in migrations()
    ]
    assert await migrate(url) == [], "a second run applies nothing"


@pytest.mark.e2e
def test_migrate_command(postgres_url: str, tmp_path: Path) -> None:
    url = create_database(postgres_url)
    command = [
        sys.executable,
        "-m",
        "casd",
        "migrate",
        "--database-url",
        url,
        "--data-dir",
        str(tmp_path),
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0
    assert "up to date" in second.stdout


def test_port_in_use_is_a_clear_error(
    casd_server_factory: ServerFactory, server: CasdServer
) -> None:
    second = casd_server_factory(start=False)
    second.port = server.port
    result = subprocess.run(
        [*second.command("serve"), "--listen", f"127.0.0.1:{server.port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot listen" in result.stderr


@pytest.mark.e2e
def test_bad_settings_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "casd", "serve", "--data-dir", str(tmp_path), "--listen", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "HOST:PORT" in result.stderr


async def test_access_log_is_one_json_object_per_line(
    module_server: CasdServer, http: aiohttp.ClientSession
) -> None:
    path = f"/v1/blobs/{digest_of(b'nothing')}"
    async with http.get(f"{module_server.url}{path}") as response:
        assert response.status == 404
    lines: list[str] = []
    for _ in range(100):  # a writer thread writes the log
        log = module_server.log().splitlines()
        lines = [line for line in log if '"casd.access"' in line and path in line]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert len(lines) == 1, "the request is logged once"
    entry = json.loads(lines[0])
    assert entry["method"] == "GET" and entry["status"] == 404 and entry["path"] == path


def unrelated_process() -> subprocess.Popen[bytes]:
    """A process of PostgreSQL's OS user that has nothing to do with PostgreSQL."""
    user = "embedded_postgres" if os.geteuid() == 0 else None
    return subprocess.Popen(["sleep", "600"], user=user)


def point_pid_file_at(server: CasdServer, pid: int, template: str) -> None:
    """A postmaster.pid as a crash leaves it, whose PID now belongs to another process."""
    path = server.data_dir / "postgres" / "postmaster.pid"
    lines = template.split("\n")
    path.write_text("\n".join([str(pid), *lines[1:]]))


async def test_stale_postmaster_pid_of_an_unrelated_process(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory(embedded=True)
    pid_file = server.data_dir / "postgres" / "postmaster.pid"
    template = pid_file.read_text()
    bystander = unrelated_process()
    try:
        # PostgreSQL crashed under a running casd, and its PID went to another process: the
        # cleanup of casd must not signal that process.
        postmaster = psutil.Process(int(template.split()[0]))
        postmaster.kill()
        postmaster.wait(10)
        point_pid_file_at(server, bystander.pid, template)
        server.stop()
        assert bystander.poll() is None, "the unrelated process was signalled"
        # casd starts the embedded PostgreSQL although the PID in the file is alive.
        point_pid_file_at(server, bystander.pid, template)
        server.start()
        assert (await put_blob(http, server.url, server.admin_token, b"after the crash"))[0] == 201
        assert server.stop() == 0
        assert bystander.poll() is None, "the unrelated process was signalled"
        assert postgres_processes(server.data_dir) == []
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.e2e
def test_embedded_database_with_a_long_path_leaves_no_socket_directory(tmp_path: Path) -> None:
    pgdata = tmp_path / ("d" * 60) / ("e" * 60) / "postgres"
    embedded = EmbeddedPostgres(pgdata)
    with embedded:
        socket_dir = Path(embedded.url.rpartition("host=")[2])
        assert socket_dir.parent == SOCKET_FALLBACK, "the data directory's path is too long"
        assert socket_dir.is_dir()
    assert not socket_dir.exists()
