"""The blob store contract (casd.stores.base), the same cases for every store.

Each case takes the parametrized ``store`` fixture; tests/stores.py names the stores (the file
store on real files in tmp_path; more backends add a factory there). What is checked is what
casd relies on: verify before visible, never replace unless told, exactly one creation under a
race, reads that know their size, idempotent removal, segments for resumable uploads, sweeps.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from casd.digests import digest_of, new_hasher
from casd.stores import BlobStore, Published, Segment
from tests.stores import STORE_KINDS, StoreKind

MiB = 1024 * 1024


# A store with a server of its own (SeaweedFS) is a real process: the service tier.
@pytest.fixture(
    params=[
        pytest.param(name, marks=[pytest.mark.service] if STORE_KINDS[name].server else [])
        for name in sorted(STORE_KINDS)
    ]
)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return STORE_KINDS[request.param]


@pytest.fixture
async def store(
    kind: StoreKind, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BlobStore]:
    servers = [request.getfixturevalue(kind.server)] if kind.server else []
    async with kind.open(tmp_path, *servers) as opened:
        yield opened


async def publish(
    store: BlobStore, data: bytes, *, replace_suspect: bool = False, parts: int = 1
) -> Published:
    """Stage ``data`` (in ``parts`` writes plus a tail), make it durable and publish it."""
    digest = digest_of(data)
    step = max(1, len(data) // (parts + 1))
    async with store.staging(digest) as staged:
        for index in range(parts):
            await staged.write(data[index * step : (index + 1) * step])
        await staged.finish([data[parts * step :]])
        assert staged.size == len(data)
        published = await store.publish(staged, digest, replace_suspect=replace_suspect)
        if published is Published.CREATED:
            await store.settle(staged)
        return published


async def read(store: BlobStore, digest: str, start: int = 0, end: int | None = None) -> bytes:
    async with store.open(digest, start, end) as reader:
        return b"".join([chunk async for chunk in reader])


async def pages(iterator: AsyncIterator[list[str]]) -> list[list[str]]:
    return [page async for page in iterator]


async def test_publish_creates_once_then_reports_existed(store: BlobStore) -> None:
    data = os.urandom(3 * MiB + 17)
    digest = digest_of(data)
    assert await store.stat(digest) is None
    assert await publish(store, data, parts=3) is Published.CREATED
    assert await store.stat(digest) == len(data)
    assert await read(store, digest) == data
    assert await publish(store, data) is Published.EXISTED
    assert await read(store, digest) == data
    assert await store.unfinished_publications() == []


async def test_staged_bytes_are_invisible_until_published(store: BlobStore) -> None:
    data = b"not yet" * 1000
    digest = digest_of(data)
    with pytest.raises(RuntimeError):
        async with store.staging(digest) as staged:
            await staged.write(data)
            await staged.finish()
            assert await store.stat(digest) is None
            raise RuntimeError("the upload failed (a digest mismatch, a client gone)")
    assert await store.stat(digest) is None
    with pytest.raises(FileNotFoundError):
        await read(store, digest)


async def test_empty_blob(store: BlobStore) -> None:
    assert await publish(store, b"") is Published.CREATED
    assert await store.stat(digest_of(b"")) == 0
    assert await read(store, digest_of(b"")) == b""


async def test_publish_never_replaces_unless_the_bytes_are_suspect(
    store: BlobStore, kind: StoreKind
) -> None:
    data = os.urandom(100_000)
    digest = digest_of(data)
    await kind.overwrite(store, digest, b"rot")  # bytes at the key, not ours
    assert await publish(store, data) is Published.EXISTED
    assert await read(store, digest) == b"rot", "a publish replaced stored bytes"
    assert await publish(store, data, replace_suspect=True) is Published.CREATED
    assert await read(store, digest) == data
    # Replacing verified bytes by the same verified bytes is a creation too (the heal).
    assert await publish(store, data, replace_suspect=True) is Published.CREATED
    assert await read(store, digest) == data


async def test_concurrent_publishers_of_one_digest_create_exactly_once(
    store: BlobStore,
) -> None:
    """Without casd's publish lock: the store alone lets exactly one of them create. (Stores
    whose conditional create is not atomic rely on the lock: see Capabilities.)"""
    for trial in range(5):
        data = os.urandom(200_000 + trial)
        results = await asyncio.gather(*(publish(store, data, parts=2) for _ in range(8)))
        assert results.count(Published.CREATED) == 1, results
        assert await read(store, digest_of(data)) == data


async def test_open_knows_the_size_and_reads_ranges(store: BlobStore) -> None:
    data = os.urandom(5 * MiB + 3)
    digest = digest_of(data)
    await publish(store, data, parts=4)
    for start, end in [
        (0, None),
        (0, 1),
        (7, 70_000),
        (2 * MiB - 1, 4 * MiB + 9),
        (len(data) - 1, None),
    ]:
        async with store.open(digest, start, end) as reader:
            assert reader.size == len(data)
            assert b"".join([chunk async for chunk in reader]) == data[start:end]
    hasher = new_hasher()
    async with store.open(digest, observe=hasher.update) as reader:
        async for _ in reader:
            pass
    assert f"blake3:{hasher.hexdigest()}" == digest
    # A reader left early closes cleanly.
    async with store.open(digest) as reader:
        async for _ in reader:
            break


async def test_missing_blobs(store: BlobStore) -> None:
    digest = digest_of(b"never stored")
    assert await store.stat(digest) is None
    with pytest.raises(FileNotFoundError):
        async with store.open(digest):
            pass
    with pytest.raises(FileNotFoundError):
        await read(store, digest, 10, 20)


async def test_delete_is_idempotent(store: BlobStore) -> None:
    data = os.urandom(1000)
    digest = digest_of(data)
    await publish(store, data)
    await store.delete(digest)
    assert await store.stat(digest) is None
    await store.delete(digest)
    await store.delete(digest_of(b"never stored"))
    assert await publish(store, data) is Published.CREATED, "deleted bytes can come back"


async def test_quarantine_moves_the_bytes_aside(store: BlobStore) -> None:
    data = os.urandom(10_000)
    digest = digest_of(data)
    await publish(store, data)
    where = await store.quarantine(digest)
    assert where is not None and digest.partition(":")[2] in where
    assert await store.stat(digest) is None
    with pytest.raises(FileNotFoundError):
        await read(store, digest)
    assert await store.quarantine(digest) is None
    assert await publish(store, data) is Published.CREATED


async def test_listing_pages_in_key_order(store: BlobStore) -> None:
    blobs = [os.urandom(64) for _ in range(40)]
    await asyncio.gather(*(publish(store, data) for data in blobs))
    digests = sorted(digest_of(data) for data in blobs)
    listed = await pages(store.list_digests())
    assert all(listed), "no empty pages"
    flat = [digest for page in listed for digest in page]
    assert flat == digests
    middle = digests[17]
    after = [digest for page in await pages(store.list_digests(middle)) for digest in page]
    assert after == digests[18:]
    assert await pages(store.list_digests(digests[-1])) == []


async def write_segment(store: BlobStore, upload_id: str, name: str, data: bytes) -> Segment:
    async with store.segment_writer(upload_id, name) as segment:
        await segment.write(data[: len(data) // 2])
        await segment.finish([data[len(data) // 2 :]])
        assert segment.size == len(data)
    return Segment(name, len(data))


async def read_all(store: BlobStore, upload_id: str, segments: Sequence[Segment]) -> bytes:
    return b"".join([chunk async for chunk in store.read_segments(upload_id, segments)])


async def test_segments_write_read_list_delete(store: BlobStore) -> None:
    upload = "0123abcd" * 4
    pieces = [os.urandom(size) for size in (3 * MiB + 1, 10, 700_000)]
    names = ["1.0", "1.1", "2.0"]
    segments = [
        await write_segment(store, upload, n, p) for n, p in zip(names, pieces, strict=True)
    ]
    assert await store.list_segments(upload) == segments
    assert await read_all(store, upload, segments) == b"".join(pieces)
    # A recorded size shorter than the segment: only the recorded bytes count.
    assert await read_all(store, upload, [Segment("1.0", 5)]) == pieces[0][:5]
    with pytest.raises(FileNotFoundError):
        await read_all(store, upload, [Segment("1.1", 11)])
    with pytest.raises(FileNotFoundError):
        await read_all(store, upload, [Segment("3.0", 1)])
    with pytest.raises(FileExistsError):
        await write_segment(store, upload, "1.1", b"names are never reused")
    listed = [upload_id for page in await pages(store.list_upload_ids()) for upload_id in page]
    assert listed == [upload]
    await store.delete_segments(upload, ["1.1"])
    await store.delete_segments(upload, ["1.1", "7.7"])  # idempotent
    assert await store.list_segments(upload) == [segments[0], segments[2]]
    await store.delete_segments(upload)
    await store.delete_segments(upload)
    assert await store.list_segments(upload) == []
    assert await pages(store.list_upload_ids()) == []


async def test_assembled_segments_publish_as_one_blob(store: BlobStore) -> None:
    upload = "feed" * 8
    pieces = [os.urandom(size) for size in (2 * MiB + 5, 1, 300_000)]
    segments = [
        await write_segment(store, upload, f"{epoch}.0", piece)
        for epoch, piece in enumerate(pieces, 1)
    ]
    data = b"".join(pieces)
    digest = digest_of(data)
    async with store.assemble(upload, segments, digest) as staged:
        assert staged.size == len(data)
        assert await store.stat(digest) is None
        assert await store.publish(staged, digest) is Published.CREATED
        await store.settle(staged)
    assert await read(store, digest) == data
    # The segments stay until the caller deletes them; one segment alone assembles too.
    assert await read_all(store, upload, segments) == data
    single = pieces[0]
    async with store.assemble(upload, segments[:1], digest_of(single)) as staged:
        assert await store.publish(staged, digest_of(single)) is Published.CREATED
        await store.settle(staged)
    assert await read(store, digest_of(single)) == single
    assert await read_all(store, upload, segments[:1]) == single
    with pytest.raises(FileNotFoundError):
        async with store.assemble(upload, [Segment("9.9", 3)], digest_of(b"abc")):
            pass


async def test_sweep_removes_abandoned_staging_only(store: BlobStore, kind: StoreKind) -> None:
    async with store.staging() as live:
        await live.write(b"a writer that is alive")
        async with store.staging() as dead:
            await dead.write(b"a writer that crashed")
            await kind.abandon(dead)
        assert await store.sweep_staging(older_than=0) == 1
        assert await store.sweep_staging(older_than=0) == 0
        await live.finish()
        data = b"a writer that is alive"
        assert await store.publish(live, digest_of(data)) is Published.CREATED
        await store.settle(live)
    assert await read(store, digest_of(data)) == data


async def test_check_reports_capabilities(store: BlobStore, kind: StoreKind) -> None:
    capabilities = await store.check()
    assert capabilities.backend == kind.name
    assert capabilities.writable
