"""Resumable uploads as segments recorded in PostgreSQL (scale-out.md §5.4), in-process on a
real PostgreSQL and real files: any service instance (a node) continues an upload that another
one started, a stale writer's bytes are never recorded, and the sweep removes exactly the
segments that no upload records and no writer can record any more."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from casd.auth import Token
from casd.blobs import Blob, BlobService
from casd.database import Database
from casd.digests import digest_of
from casd.stores import Segment
from casd.stores.file import FileBlobStore
from casd.upload_leases import UploadRow
from casd.uploads import Append, RequestBody, UploadService, UploadStatus

MiB = 1024 * 1024


async def chunks(data: bytes, step: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def body(data: bytes) -> RequestBody:
    async def accept() -> None:
        return None

    return RequestBody(chunks(data), len(data), lambda error: None, accept)


@pytest.fixture
async def token(database_url: str) -> Token:
    connection = await asyncpg.connect(database_url)
    try:
        token_id = await connection.fetchval(
            "INSERT INTO tokens (secret_hash, write_prefixes) VALUES ($1, '{\"\"}') RETURNING id",
            os.urandom(32),
        )
    finally:
        await connection.close()
    return Token(token_id, "", ("",))


Node = Callable[[], Awaitable[UploadService]]


@pytest.fixture
async def node(database_url: str, tmp_path: Path) -> AsyncIterator[Node]:
    """Start an upload service as a node would: its own pool and process lock, the same
    database and blob store as every other node."""
    data = tmp_path / "data"
    async with AsyncExitStack() as stack:

        async def start() -> UploadService:
            db = await Database.connect(database_url, max_size=4)
            stack.push_async_callback(db.close)
            store = FileBlobStore(data / "blobs", data / "staging", data / "quarantine")
            service = UploadService(db, store, BlobService(db, store), upload_ttl=3600)
            await service.start()
            stack.push_async_callback(service.close)
            return service

        yield start


async def row_of(service: UploadService, upload_id: str) -> asyncpg.Record:
    record = await service.db.fetchrow("get_upload_lease", upload_id)
    assert record is not None
    return record


def segment_names(service: UploadService, upload_id: str) -> list[str]:
    assert isinstance(service.store, FileBlobStore)
    directory = service.store.uploads_dir / upload_id
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


async def test_an_upload_started_on_one_node_completes_on_another(node: Node, token: Token) -> None:
    first, second = await node(), await node()
    data = os.urandom(3 * MiB + 7)
    started = await first.create(token, Append(), body(data[:MiB]))
    assert isinstance(started, UploadStatus) and started.offset == MiB
    recorded = await row_of(first, started.id)
    assert recorded["segments"] == [["1.0", MiB]]
    # The second node has no hasher for it: it hashes the recorded segments again.
    done = await second.append(
        started.id, token, Append(offset=MiB, complete=True), body(data[MiB:])
    )
    assert done == Blob(digest_of(data), len(data))
    assert segment_names(second, started.id) == [], "segments go once the blob is published"
    async with second.store.open(digest_of(data)) as reader:
        assert b"".join([chunk async for chunk in reader]) == data


async def test_a_stale_writer_cannot_record_its_segments(node: Node, token: Token) -> None:
    service = await node()
    lease = await service.leases.create("a" * 32, token.id, UploadRow(0, None, None))
    assert await service.leases.checkpoint(lease, 10, [Segment("1.0", 10)])
    # Another node took the upload over (the writer's process looked dead to it).
    await service.db.execute("clear_dead_writer", lease.upload_id, lease.epoch)
    assert not await service.leases.checkpoint(lease, 30, [Segment("1.0", 10), Segment("1.1", 20)])
    assert not await service.leases.release(lease, 30, [Segment("1.0", 10), Segment("1.1", 20)])
    recorded = await row_of(service, lease.upload_id)
    assert (recorded["upload_offset"], recorded["segments"]) == (10, [["1.0", 10]])


async def test_the_sweep_removes_what_no_upload_records(node: Node, token: Token) -> None:
    service = await node()
    data = os.urandom(MiB)
    paused = await service.create(token, Append(), body(data[:1000]))
    assert isinstance(paused, UploadStatus)
    store = service.store
    # A writer of epoch 1 that died before it recorded its second segment; an upload without
    # a row (its creating request failed); a recorded segment stays.
    async with store.segment_writer(paused.id, "1.1") as stray:
        await stray.finish([b"never recorded"])
    async with store.segment_writer("b" * 32, "1.0") as orphan:
        await orphan.finish([b"no upload"])
    await service.expire()
    assert segment_names(service, paused.id) == ["1.0"]
    assert segment_names(service, "b" * 32) == []
    done = await service.append(
        paused.id, token, Append(offset=1000, complete=True), body(data[1000:])
    )
    assert done == Blob(digest_of(data), len(data))


async def test_an_upload_staged_before_segments_resumes(
    node: Node, token: Token, database_url: str, tmp_path: Path
) -> None:
    """One staging file per upload (before migration 0010) becomes its segment 0.0."""
    data = os.urandom(300_000)
    upload_id = "c" * 32
    legacy = tmp_path / "data" / "uploads" / upload_id
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(data[:100_000] + b"written after the last checkpoint")
    connection = await asyncpg.connect(database_url)
    try:  # the row as migration 0010 leaves it
        await connection.execute(
            "INSERT INTO uploads (id, token_id, upload_offset, segments)"
            """ VALUES ($1, $2, 100000, '[["0.0", 100000]]')""",
            upload_id,
            token.id,
        )
    finally:
        await connection.close()
    service = await node()
    assert segment_names(service, upload_id) == ["0.0"]
    done = await service.append(
        upload_id, token, Append(offset=100_000, complete=True), body(data[100_000:])
    )
    assert done == Blob(digest_of(data), len(data))
