"""casd scrub: re-hashing finds rot before a job does; files and rows are reconciled; the
periodic scrub of the server does the same, one process at a time."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time

import aiohttp
import pytest

from casd.scrub import Scrubber
from tests.conftest import HttpServerFactory, ServerFactory
from tests.helpers import blob_path, digest_of, problem_of
from tests.inprocess import InProcessServer
from tests.integrity_helpers import (
    blob_rows,
    blob_service,
    flip_byte,
    full_get,
    metric_samples,
    quarantined_files,
    run_json,
    stored_blob,
)
from tests.name_helpers import create_only, get_name, put_name

MiB = 1024 * 1024


@pytest.fixture
def scrub_server(http_server_factory: HttpServerFactory) -> InProcessServer:
    """A server of its own: a scrub's counts cover every blob there is."""
    return http_server_factory()


async def test_scrub_quarantines_rot_and_reports_it(
    scrub_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = scrub_server
    intact = [await stored_blob(http, server, size) for size in (10, 1000, 2 * MiB)]
    rotten = await stored_blob(http, server, 3 * MiB + 1)
    name = "prod/images/rotten.qcow2"
    status, _, _ = await put_name(
        http, server, server.admin_token, name, {"digest": digest_of(rotten)}, create_only()
    )
    assert status == 201
    # One rotten blob is found by a reader first; the scrub finds the second one.
    first = await stored_blob(http, server, 50_000)
    flip_byte(blob_path(server.data_dir, digest_of(first)), 49_000)
    assert (await full_get(http, f"{server.url}/v1/blobs/{digest_of(first)}"))[0] is None
    flip_byte(blob_path(server.data_dir, digest_of(rotten)), 2 * MiB + 5)

    report = run_json(server, "scrub")

    assert report["checked"] == 4, "the quarantined blob has no bytes left to check"
    assert report["checked_bytes"] == sum(map(len, intact)) + len(rotten)
    assert (report["corrupt"], report["corrupt_bytes"]) == (1, len(rotten))
    assert report["damaged"] is True
    assert report["missing"] == report["adopted"] == 0
    rows = await blob_rows(server)
    assert rows[digest_of(rotten)] == rows[digest_of(first)] == "quarantined"
    assert all(rows[digest_of(data)] == "ok" for data in intact)
    assert len(quarantined_files(server, digest_of(rotten))) == 1
    async with http.get(f"{server.url}/v1/blobs/{digest_of(rotten)}") as response:
        assert response.status == 410
        assert (await problem_of(response))["code"] == "blob-quarantined"
    assert (await get_name(http, server, name))[1]["healthy"] is False
    status, problem, _ = await put_name(
        http, server, server.admin_token, "prod/x", {"digest": digest_of(rotten)}, create_only()
    )
    assert status == 422 and problem["code"] == "unknown-blob"
    for data in intact:
        assert await full_get(http, f"{server.url}/v1/blobs/{digest_of(data)}") == (200, data)

    again = run_json(server, "scrub")
    assert (again["checked"], again["corrupt"], again["damaged"]) == (3, 0, False)
    samples = await metric_samples(http, server)
    assert samples['casd_last_run{kind="scrub",stat="checked"}'] == 3
    assert samples['casd_last_run_timestamp_seconds{kind="scrub"}'] > time.time() - 600


async def test_scrub_output_and_strict_exit_status(
    scrub_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = scrub_server
    data = await stored_blob(http, server, 5000)
    result = server.run_cli("scrub", "--strict")
    assert result.returncode == 0, result.stderr
    assert "checked 1 blobs (5000 bytes)" in result.stdout
    assert "corrupt: 0 blobs" in result.stdout

    flip_byte(blob_path(server.data_dir, digest_of(data)), 4999)
    result = server.run_cli("scrub", "--strict")
    assert result.returncode == 1
    assert "corrupt: 1 blobs (5000 bytes), quarantined" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("casd: scrub found damaged blobs")

    result = server.run_cli("scrub", "--older-than", "soon")
    assert result.returncode == 2 and "not a duration" in result.stderr


async def test_older_than_only_rehashes_blobs_not_verified_recently(
    scrub_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = scrub_server
    data = await stored_blob(http, server, 100_000)
    flip_byte(blob_path(server.data_dir, digest_of(data)), 10)
    async with blob_service(server) as blobs:
        recent = await Scrubber(blobs, older_than=3600).run()
        assert (recent.checked, recent.present, recent.corrupt) == (0, 1, 0)
        due = await Scrubber(blobs, older_than=0).run()
        assert (due.checked, due.corrupt) == (1, 1)


async def test_reconciles_orphan_files_and_missing_files(
    scrub_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    server = scrub_server
    # A verified file without a row (say, a crash between rename and commit) is adopted.
    orphan = os.urandom(300_000)
    orphan_path = blob_path(server.data_dir, digest_of(orphan))
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    # A file without a row whose bytes do not match its name is set aside.
    impostor = blob_path(server.data_dir, digest_of(b"what the name promises"))
    impostor.parent.mkdir(parents=True, exist_ok=True)
    impostor.write_bytes(b"something else")
    # A row whose file is gone is marked missing; its name reports it.
    lost = await stored_blob(http, server, 4000)
    await put_name(
        http, server, server.admin_token, "prod/lost", {"digest": digest_of(lost)}, create_only()
    )
    blob_path(server.data_dir, digest_of(lost)).unlink()
    # Something that is no blob at all is left alone.
    stray = server.data_dir / "blobs" / "blake3" / "ab" / "notes.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("not a blob")

    report = run_json(server, "scrub")

    assert (report["adopted"], report["adopted_bytes"]) == (1, len(orphan))
    assert report["orphans_quarantined"] == 1
    assert report["missing"] == 1
    assert report["foreign_files"] == 1
    rows = await blob_rows(server)
    assert rows[digest_of(orphan)] == "ok"
    assert digest_of(b"what the name promises") not in rows
    assert rows[digest_of(lost)] == "missing"
    assert await full_get(http, f"{server.url}/v1/blobs/{digest_of(orphan)}") == (200, orphan)
    assert not impostor.exists()
    assert len(quarantined_files(server, digest_of(b"what the name promises"))) == 1
    async with http.get(f"{server.url}/v1/blobs/{digest_of(lost)}") as response:
        assert response.status == 404
    assert (await get_name(http, server, "prod/lost"))[1]["healthy"] is False
    assert stray.read_text() == "not a blob"

    # The lost bytes come back (a restore from backup): the next scrub makes the blob whole.
    blob_path(server.data_dir, digest_of(lost)).write_bytes(lost)
    report = run_json(server, "scrub")
    assert (report["restored"], report["missing"], report["adopted"]) == (1, 0, 0)
    assert (await get_name(http, server, "prod/lost"))[1]["healthy"] is True
    assert await full_get(http, f"{server.url}/v1/blobs/{digest_of(lost)}") == (200, lost)


async def test_scrub_next_to_uploads_takes_nothing_in_flight_for_an_orphan(
    module_http_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    """Scrubs in a loop while clients upload: every upload ends as an intact, healthy blob, and
    no scrub adopts, quarantines or marks missing anything."""
    contents = [os.urandom(size) for size in (16, 100, 5000) for _ in range(60)]
    contents += [os.urandom(2 * MiB) for _ in range(8)]
    stop = asyncio.Event()
    reports = []

    async def scrub_loop() -> None:
        async with blob_service(module_http_server) as blobs:
            while not stop.is_set():
                # Rows verified within the hour are only checked to be there: quick rounds.
                reports.append(await Scrubber(blobs, older_than=3600).run())

    async def uploader(batch: list[bytes]) -> None:
        for data in batch:
            async with http.put(
                f"{module_http_server.url}/v1/blobs/{digest_of(data)}",
                data=data,
                headers=module_http_server.admin_headers,
            ) as response:
                assert response.status == 201, "new content, recorded by its upload alone"

    scrubbing = asyncio.create_task(scrub_loop())
    await asyncio.wait_for(
        asyncio.gather(*(uploader(contents[n::8]) for n in range(8))), timeout=120
    )
    stop.set()
    await scrubbing

    assert reports, "at least one scrub ran during the uploads"
    for report in reports:
        assert (report.adopted, report.corrupt, report.missing) == (0, 0, 0), report
    rows = await blob_rows(module_http_server)
    for data in contents:
        assert rows[digest_of(data)] == "ok"
        url = f"{module_http_server.url}/v1/blobs/{digest_of(data)}"
        assert await full_get(http, url) == (200, data)


async def test_max_rate_paces_the_reading(
    scrub_server: InProcessServer, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        await stored_blob(http, scrub_server, MiB)
    report = run_json(scrub_server, "scrub", "--max-rate", "2")
    assert report["checked_bytes"] == 3 * MiB
    assert report["seconds"] >= 3 * MiB / 2_000_000 * 0.9


async def test_periodic_scrub_one_process_at_a_time(
    http_server_factory: HttpServerFactory, http: aiohttp.ClientSession
) -> None:
    server = http_server_factory("--workers", "2", env={"CASD_SCRUB_INTERVAL": "1s"})
    data = await stored_blob(http, server, 200_000)
    flip_byte(blob_path(server.data_dir, digest_of(data)), 1234)

    deadline = time.monotonic() + 60
    while (await blob_rows(server))[digest_of(data)] != "quarantined":
        assert time.monotonic() < deadline, "the periodic scrub did not find the rot"
        await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # a few more periodic scrubs

    connection = await server.connect_db()
    try:
        runs = await connection.fetch(
            "SELECT started_at, finished_at, stats FROM maintenance_runs"
            " WHERE kind = 'scrub' ORDER BY started_at"
        )
    finally:
        await connection.close()
    assert len(runs) >= 2
    assert sum(json.loads(run["stats"])["corrupt"] for run in runs) == 1
    for earlier, later in itertools.pairwise(runs):
        assert later["started_at"] >= earlier["finished_at"], "two scrubs ran at once"
    assert not blob_path(server.data_dir, digest_of(data)).exists()


async def test_scrub_and_gc_work_on_an_embedded_database_with_the_server_stopped(
    casd_server_factory: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = casd_server_factory(embedded=True)
    data = await stored_blob(http, server, 70_000)
    flip_byte(blob_path(server.data_dir, digest_of(data)), 100)
    server.stop()

    report = run_json(server, "scrub")
    assert (report["checked"], report["corrupt"]) == (1, 1)
    assert run_json(server, "gc", "--dry-run")["collected"] == 0

    server.start()
    async with http.get(f"{server.url}/v1/blobs/{digest_of(data)}") as response:
        assert response.status == 410
