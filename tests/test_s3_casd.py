"""casd over S3, in-process (aiohttp's test server) on a real PostgreSQL and a real SeaweedFS:
what a client sees is what it sees over the file store, and the bucket holds what it should.

Starting ``casd serve`` against a store it cannot use and killing it between an object and its
row are the end-to-end cases here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import ClientPayloadError, ServerDisconnectedError
from aiohttp.test_utils import TestClient, TestServer

from casd.blobs import BlobService
from casd.config import Settings
from casd.core import Core, open_core
from casd.database import migrate
from casd.gc import Collector
from casd.http.app import create_app
from casd.maintenance import SWEEP_LOCK, maintenance_lock, sweep_if_free
from casd.scrub import Scrubber
from casd.stores.s3 import S3BlobStore
from tests.conftest import ServerFactory, create_database, free_port
from tests.helpers import digest_of, problem_of
from tests.seaweed import S3Area, SeaweedFS, new_area
from tests.stores import abandon_s3, environment
from tests.test_crashes import crashed, row_count

MiB = 1024 * 1024


@dataclass
class S3Casd:
    """casd in this process over a fresh prefix of the session's SeaweedFS."""

    client: TestClient[Any, Any]
    area: S3Area
    core: Core
    database_url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def blobs(self) -> BlobService:
        return self.core.blobs

    async def put(self, data: bytes, digest: str | None = None) -> int:
        async with self.client.put(
            f"/v1/blobs/{digest or digest_of(data)}", data=data, headers=self.auth
        ) as response:
            return response.status

    async def get(self, digest: str) -> tuple[int | None, bytes]:
        """(status, body) of a complete answer, (None, what came) of one cut short."""
        received = bytearray()
        try:
            async with self.client.get(f"/v1/blobs/{digest}") as response:
                async for chunk in response.content.iter_any():
                    received += chunk
                return response.status, bytes(received)
        except (ClientPayloadError, ServerDisconnectedError):
            return None, bytes(received)

    def key(self, digest: str) -> str:
        hexdigest = digest.removeprefix("blake3:")
        return f"blake3/{hexdigest[:2]}/{hexdigest}"

    async def status_of(self, digest: str) -> str | None:
        connection = await asyncpg.connect(self.database_url)
        try:
            value = await connection.fetchval("SELECT status FROM blobs WHERE digest = $1", digest)
        finally:
            await connection.close()
        return None if value is None else str(value)


@pytest.fixture
async def casd(postgres_url: str, seaweedfs: SeaweedFS, tmp_path: Path) -> AsyncIterator[S3Casd]:
    area = new_area(seaweedfs)
    url = create_database(postgres_url)
    await migrate(url)
    settings = Settings(data_dir=tmp_path / "data", blob_store=area.url)
    with environment(seaweedfs.aws_env()):
        async with open_core(settings, url, pool_size=4) as core:
            assert (await core.store.check()).conditional_create
            secret = await core.tokens.create_admin_if_first()
            assert secret is not None
            client: TestClient[Any, Any] = TestClient(TestServer(create_app(core)))
            await client.start_server()
            try:
                yield S3Casd(client, area, core, url, secret)
            finally:
                await client.close()


async def test_blobs_and_names_over_s3(casd: S3Casd) -> None:
    small, large = os.urandom(64 * 1024), os.urandom(20 * MiB + 3)
    for data in (small, large):
        assert await casd.put(data) == 201
        assert await casd.put(data) == 200
        assert await casd.get(digest_of(data)) == (200, data)
        async with casd.client.head(f"/v1/blobs/{digest_of(data)}") as response:
            assert response.status == 200 and response.content_length == len(data)
    async with casd.client.get(
        f"/v1/blobs/{digest_of(large)}", headers={"Range": "bytes=100-199"}
    ) as response:
        assert response.status == 206 and await response.read() == large[100:200]
    async with casd.client.post("/v1/blobs", data=large[: 9 * MiB], headers=casd.auth) as posted:
        assert posted.status == 201 and (await posted.json())["digest"] == digest_of(
            large[: 9 * MiB]
        )
    async with casd.client.put(
        "/v1/names/s3/large",
        json={"digest": digest_of(large)},
        headers={**casd.auth, "If-None-Match": "*"},
    ) as response:
        assert response.status in (200, 201), await response.text()
    async with casd.client.get("/v1/names/s3/large/content") as response:
        assert response.status == 200 and await response.read() == large
    assert sorted(await casd.area.keys()) == sorted(
        casd.key(digest_of(data)) for data in (small, large, large[: 9 * MiB])
    ), "blobs only: no staging object, no segment left"
    assert await casd.area.open_multipart_uploads() == []


async def test_a_wrong_digest_leaves_no_object_and_no_open_upload(casd: S3Casd) -> None:
    data = os.urandom(20 * MiB)
    wrong = digest_of(b"something else")
    async with casd.client.put(f"/v1/blobs/{wrong}", data=data, headers=casd.auth) as response:
        assert response.status == 400
        assert (await problem_of(response))["code"] == "digest-mismatch"
    assert await casd.area.keys() == [] and await casd.area.open_multipart_uploads() == []


async def test_a_resumable_upload_over_s3(casd: S3Casd) -> None:
    data = os.urandom(7 * MiB + 11)
    digest = digest_of(data)
    headers = {**casd.auth, "Upload-Length": str(len(data)), "Casd-Digest": digest}
    async with casd.client.post("/v1/uploads", headers=headers, data=data[: 3 * MiB]) as created:
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
    upload_id = location.rpartition("/")[2]
    assert any(key.startswith(f"uploads/{upload_id}/") for key in await casd.area.keys())
    async with casd.client.head(location, headers=casd.auth) as head:
        assert head.headers["Upload-Offset"] == str(3 * MiB)
    headers = {**casd.auth, "Upload-Offset": str(3 * MiB), "Upload-Complete": "?1"}
    async with casd.client.patch(location, headers=headers, data=data[3 * MiB :]) as done:
        assert done.status == 201, await done.text()
    assert await casd.get(digest) == (200, data)
    assert await casd.area.keys() == [casd.key(digest)], "the segments went"


async def test_gc_and_scrub_over_s3(casd: S3Casd) -> None:
    kept, collected, orphan = (os.urandom(1000 + n) for n in range(3))
    for data in (kept, collected):
        assert await casd.put(data) == 201
    async with casd.client.put(
        "/v1/names/keep/me",
        json={"digest": digest_of(kept)},
        headers={**casd.auth, "If-None-Match": "*"},
    ) as response:
        assert response.status in (200, 201)
    report = await Collector(casd.blobs, keep_versions=1, grace=0).run()
    assert report.as_dict()["collected"] == 1
    assert await casd.area.keys() == [casd.key(digest_of(kept))]
    # Scrub: an object without a row is adopted, a row without an object marked missing.
    await casd.area.put(casd.key(digest_of(orphan)), orphan)
    await casd.area.delete(casd.key(digest_of(kept)))
    scrub = await Scrubber(casd.blobs).run()
    assert scrub.as_dict()["adopted"] == 1 and scrub.as_dict()["missing"] == 1
    assert await casd.get(digest_of(orphan)) == (200, orphan)
    assert await casd.status_of(digest_of(kept)) == "missing"


async def test_bytes_changed_in_the_bucket_are_never_served_complete_and_heal(
    casd: S3Casd,
) -> None:
    data = os.urandom(3 * MiB)
    digest = digest_of(data)
    assert await casd.put(data) == 201
    rotten = bytearray(data)
    rotten[len(data) // 2] ^= 0xFF
    await casd.area.put(casd.key(digest), bytes(rotten))
    status, received = await casd.get(digest)
    assert status is None and received != data and len(received) < len(data)
    assert await casd.status_of(digest) == "quarantined"
    assert (await casd.get(digest))[0] == 410
    assert [key for key in await casd.area.keys() if key.startswith("quarantine/")]
    assert await casd.put(data) in (200, 201), "a re-upload heals it"
    assert await casd.get(digest) == (200, data)
    assert await casd.status_of(digest) == "ok"


async def test_an_object_store_outage_is_503_with_retry_after(
    casd: S3Casd, seaweedfs: SeaweedFS
) -> None:
    data = os.urandom(100_000)
    with seaweedfs.stopped():
        async with casd.client.put(
            f"/v1/blobs/{digest_of(data)}", data=data, headers=casd.auth
        ) as response:
            assert response.status == 503
            assert (await problem_of(response))["code"] == "unavailable"
            assert response.headers["Retry-After"]
        assert await casd.status_of(digest_of(data)) is None, "no row without its object"
    assert await casd.put(data) == 201
    assert await casd.get(digest_of(data)) == (200, data)


@pytest.mark.e2e
def test_serve_refuses_a_store_it_cannot_use_with_one_line(
    postgres_url: str, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    area = new_area(seaweedfs)
    cases = {
        "missing bucket": ("s3://no-such-bucket/x", {}, "does not exist"),
        "bad credentials": (area.url, {"AWS_SECRET_ACCESS_KEY": "wrong"}, "credentials"),
        "wrong endpoint": (area.url, {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, "answer"),
    }
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CASD_", "AWS_"))}

    def serve(case: str) -> subprocess.CompletedProcess[str]:
        url, env, _ = cases[case]
        command = [sys.executable, "-m", "casd", "serve", "--data-dir", str(tmp_path / case)]
        command += ["--database-url", create_database(postgres_url), "--blob-store", url]
        return subprocess.run(
            [*command, "--listen", f"127.0.0.1:{free_port()}", "--log-format", "text"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**environment, **seaweedfs.aws_env(**env)},
            check=False,
        )

    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(cases, pool.map(serve, cases), strict=True))
    for case, result in results.items():
        assert result.returncode != 0, (case, result.stderr)
        critical = [line for line in result.stderr.splitlines() if "cannot serve" in line]
        assert len(critical) == 1 and cases[case][2] in critical[0], (case, result.stderr)


async def test_one_process_at_a_time_sweeps_what_dead_nodes_left(casd: S3Casd) -> None:
    store = casd.core.store
    assert isinstance(store, S3BlobStore)
    async with store.staging(digest_of(b"x" * 10)) as staged:
        await abandon_s3(staged)  # a node died in the middle of an upload
    assert len(await casd.area.open_multipart_uploads()) == 1
    async with maintenance_lock(casd.core.db, SWEEP_LOCK):  # another process sweeps now
        assert not await sweep_if_free(casd.core, older_than=0)
    assert len(await casd.area.open_multipart_uploads()) == 1
    assert await sweep_if_free(casd.core, older_than=3600)
    assert len(await casd.area.open_multipart_uploads()) == 1, "too young: maybe alive"
    assert await sweep_if_free(casd.core, older_than=0)
    assert await casd.area.open_multipart_uploads() == []


@pytest.mark.parametrize("size", [MiB + 3, 20 * MiB + 3], ids=["one-part", "multipart"])
async def test_a_put_killed_after_its_object_completed_before_its_row_is_never_stuck(
    casd_server_factory: ServerFactory, s3_area: S3Area, http: aiohttp.ClientSession, size: int
) -> None:
    """kill -9 of the whole server once the object is complete at its key and before its row
    commits: the PUT was never answered; after the restart the blob is not served yet (the
    next upload or scrub adopts the object) or served whole, and uploading it again makes it
    whole and leaves no multipart upload open."""
    crash = {**s3_area.env(), "CASD_TEST_CRASH_AT": "publish-before-commit"}
    server = casd_server_factory(env=crash)
    data = os.urandom(size)
    digest = digest_of(data)
    url = f"{server.url}/v1/blobs/{digest}"
    with contextlib.suppress(aiohttp.ClientError):
        async with http.put(url, data=data, headers=server.admin_headers) as response:
            pytest.fail(f"answered {response.status} although the server was to die")
    await crashed(server)
    assert await s3_area.keys() != [], "the object was complete before the crash"
    async with http.get(url) as response:  # undone (not adopted yet) or done: never damaged
        assert response.status in (404, 200), await response.text()
        assert response.status == 404 or await response.read() == data
    async with http.put(url, data=data, headers=server.admin_headers) as response:
        assert response.status in (200, 201), await response.text()
    async with http.get(url) as response:
        assert response.status == 200
        assert await response.read() == data
    assert await row_count(server, digest) == 1
    assert await s3_area.open_multipart_uploads() == []
