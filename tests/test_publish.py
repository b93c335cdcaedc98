"""Publishing, on a real PostgreSQL in-process: serialised per digest by the publish lock,
never replacing healthy bytes, healing suspect ones, and verified_at only for bytes that
this upload verified (scale-out.md §5.2)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from casd.blobs import BlobService
from casd.database import Database
from casd.digests import blob_relpath, digest_of, publish_lock_key
from casd.stores.file import FileBlobStore

OLD = datetime(2020, 1, 1, tzinfo=UTC)


async def stream(data: bytes, step: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


@pytest.fixture
async def blobs(database_url: str, tmp_path: Path) -> AsyncIterator[BlobService]:
    db = await Database.connect(database_url, max_size=20)
    data = tmp_path / "data"
    store = FileBlobStore(data / "blobs", data / "staging", data / "quarantine")
    try:
        yield BlobService(db, store)
    finally:
        await db.close()


def stored_path(blobs: BlobService, digest: str) -> Path:
    assert isinstance(blobs.store, FileBlobStore)
    return blobs.store.root / blob_relpath(digest)


async def row(blobs: BlobService, digest: str) -> asyncpg.Record:
    record = await blobs.db.fetchrow("get_blob", digest)
    assert record is not None
    return record


async def test_concurrent_uploads_of_one_digest_create_it_once(blobs: BlobService) -> None:
    for trial in range(4):
        data = os.urandom(300_000 + trial)
        digest = digest_of(data)
        results = await asyncio.gather(
            *(blobs.ingest(stream(data), digest, len(data)) for _ in range(12))
        )
        assert [created for _, created in results].count(True) == 1
        assert stored_path(blobs, digest).read_bytes() == data
        assert (await row(blobs, digest))["status"] == "ok"
    assert isinstance(blobs.store, FileBlobStore)
    assert list(blobs.store.staging_dir.iterdir()) == []


async def test_a_publisher_waits_for_the_publish_lock(
    blobs: BlobService, database_url: str
) -> None:
    data = os.urandom(10_000)
    digest = digest_of(data)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1, $2)", *publish_lock_key(digest))
            upload = asyncio.ensure_future(blobs.ingest(stream(data), digest, len(data)))
            await asyncio.sleep(0.5)
            assert not upload.done(), "published without the digest's publish lock"
            assert not stored_path(blobs, digest).exists()
        blob, created = await asyncio.wait_for(upload, 10)
    finally:
        await holder.close()
    assert created and blob.digest == digest


async def test_a_reupload_leaves_verified_at_alone(blobs: BlobService, database_url: str) -> None:
    data = os.urandom(50_000)
    digest = digest_of(data)
    await blobs.ingest(stream(data), digest)
    await set_verified(database_url, digest, OLD)
    before = await row(blobs, digest)
    _, created = await blobs.ingest(stream(data), digest)
    after = await row(blobs, digest)
    assert not created
    assert after["verified_at"] == OLD, "bytes this upload did not store counted as verified"
    assert after["last_used_at"] >= before["last_used_at"]


async def set_verified(database_url: str, digest: str, when: datetime) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE blobs SET verified_at = $2 WHERE digest = $1", digest, when
        )
    finally:
        await connection.close()


@pytest.mark.parametrize("status", ["quarantined", "missing"])
async def test_a_reupload_heals_suspect_bytes(
    blobs: BlobService, database_url: str, status: str
) -> None:
    data = os.urandom(40_000)
    digest = digest_of(data)
    await blobs.ingest(stream(data), digest)
    stored_path(blobs, digest).write_bytes(b"rot")
    await blobs.db.execute("set_blob_status", digest, status)
    await set_verified(database_url, digest, OLD)
    _, created = await blobs.ingest(stream(data), digest)
    assert not created
    assert stored_path(blobs, digest).read_bytes() == data
    healed = await row(blobs, digest)
    assert healed["status"] == "ok" and healed["verified_at"] > OLD


async def test_bytes_without_a_row_are_replaced_by_verified_ones(blobs: BlobService) -> None:
    data = os.urandom(40_000)
    digest = digest_of(data)
    path = stored_path(blobs, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left by a stranger")
    _, created = await blobs.ingest(stream(data), digest)
    assert created
    assert path.read_bytes() == data
    assert (await row(blobs, digest))["verified_at"] is not None
