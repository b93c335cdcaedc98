"""The S3 blob store on a real SeaweedFS (tests/seaweed.py): what is particular to S3.

The cases every store passes are in tests/test_store_conformance.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from casd.config import parse_s3_location
from casd.digests import digest_of
from casd.errors import Unavailable
from casd.stores import Published, Segment, StagedBlob
from casd.stores.s3 import S3BlobStore
from casd.stores.s3_upload import ByteBudget
from tests.seaweed import S3Area, SeaweedFS, new_area
from tests.stores import environment, s3_store


async def test_the_test_store_signs_requests_and_honours_conditional_creates(
    s3_area: S3Area,
) -> None:
    await s3_area.put("blake3/ab/abc", b"first")
    async with s3_area.client() as client:
        with pytest.raises(ClientError) as refused:
            await client.put_object(
                Bucket=s3_area.bucket,
                Key=f"{s3_area.prefix}blake3/ab/abc",
                Body=b"2",
                IfNoneMatch="*",
            )
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert await s3_area.get("blake3/ab/abc") == b"first"
    assert await s3_area.keys() == ["blake3/ab/abc"]
    async with s3_area.seaweed.client(retries=1, secret_key="wrong") as client:
        with pytest.raises(ClientError) as denied:  # requests are signed and checked
            await client.list_objects_v2(Bucket=s3_area.bucket, Prefix=s3_area.prefix)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


MiB = 1024 * 1024


@pytest.fixture
async def s3(seaweedfs: SeaweedFS, tmp_path: Path) -> AsyncIterator[S3BlobStore]:
    async with s3_store(tmp_path, seaweedfs) as store:
        assert isinstance(store, S3BlobStore)
        yield store


def area_of(store: S3BlobStore, seaweed: SeaweedFS) -> S3Area:
    return S3Area(seaweed, store.prefix)


async def stream(staged: StagedBlob, data: bytes, chunk: int = MiB) -> None:
    for start in range(0, len(data) - chunk, chunk):
        await staged.write(data[start : start + chunk])
    await staged.finish([data[(len(data) - 1) // chunk * chunk :]])


async def read(store: S3BlobStore, digest: str) -> bytes:
    async with store.open(digest) as reader:
        return b"".join([chunk async for chunk in reader])


async def test_a_known_digest_streams_into_parts_at_its_key_invisible_until_published(
    s3: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    area = area_of(s3, seaweedfs)
    data = os.urandom(13 * MiB + 7)
    digest = digest_of(data)
    async with s3.staging(digest) as staged:
        await stream(staged, data)
        key = s3.blob_key(digest).removeprefix(s3.prefix)
        assert await area.open_multipart_uploads() == [key], "parts went to the blob's key"
        assert await s3.stat(digest) is None and await area.keys() == []
        assert await s3.publish(staged, digest) is Published.CREATED
    assert await area.keys() == [key], "no copy, no staging object"
    assert await area.open_multipart_uploads() == []
    assert await read(s3, digest) == data
    async with s3.staging(digest) as again:  # the second upload of the same bytes
        await stream(again, data)
        assert await s3.publish(again, digest) is Published.EXISTED
    assert await area.open_multipart_uploads() == [], "the loser's upload was aborted"


async def test_a_failed_upload_leaves_no_object_and_no_open_upload(
    s3: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    area = area_of(s3, seaweedfs)
    data = os.urandom(11 * MiB)
    for expected in (digest_of(data), None):
        with pytest.raises(RuntimeError):
            async with s3.staging(expected) as staged:
                await stream(staged, data)
                raise RuntimeError("the digest did not match, the client went away")
    assert await area.keys() == [] and await area.open_multipart_uploads() == []


async def test_an_unknown_digest_is_staged_then_copied_once_verified(
    s3: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    area = area_of(s3, seaweedfs)
    data = os.urandom(11 * MiB)
    digest = digest_of(data)
    async with s3.staging() as staged:
        await stream(staged, data)
        [staging] = await area.keys()
        assert staging.startswith("staging/"), "a large body is durable before its digest"
        assert await s3.publish(staged, digest) is Published.CREATED
    assert await area.keys() == [s3.blob_key(digest).removeprefix(s3.prefix)]
    assert await read(s3, digest) == data


async def test_parts_in_flight_stay_within_the_buffer_budget(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    async with s3_store(tmp_path, seaweedfs) as store:
        assert isinstance(store, S3BlobStore)
        store.budget = ByteBudget(10 * MiB)  # two parts
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(store.budget.used)
                await asyncio.sleep(0.001)

        async def upload(data: bytes) -> None:
            async with store.staging(digest_of(data)) as staged:
                await stream(staged, data)
                assert await store.publish(staged, digest_of(data)) is Published.CREATED

        blobs = [os.urandom(16 * MiB) for _ in range(3)]
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(asyncio.gather(*(upload(data) for data in blobs)), 120)
        finally:
            watcher.cancel()
        assert max(seen) == 10 * MiB, "the budget was used, and never exceeded"
        assert store.budget.used == 0
        for data in blobs:
            assert await read(store, digest_of(data)) == data


async def test_large_segments_are_assembled_by_server_side_copies(
    s3: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    upload = "5eed" * 8
    pieces = [os.urandom(size) for size in (6 * MiB, 10, 2 * MiB, 5 * MiB + 1, MiB)]
    segments = []
    for serial, piece in enumerate(pieces):
        async with s3.segment_writer(upload, f"1.{serial}") as writer:
            await stream(writer, piece)
        segments.append(Segment(f"1.{serial}", len(piece)))
    data = b"".join(pieces)
    digest = digest_of(data)
    async with s3.assemble(upload, segments, digest) as staged:
        assert staged.size == len(data)
        assert await s3.publish(staged, digest) is Published.CREATED
    assert await read(s3, digest) == data
    assert await area_of(s3, seaweedfs).open_multipart_uploads() == []


async def test_check_finds_conditional_writes_and_says_why_it_cannot_start(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    async with s3_store(tmp_path, seaweedfs) as store:
        capabilities = await store.check()
        assert capabilities.backend == "s3" and capabilities.conditional_create
        assert "conditional writes honoured" in capabilities.detail
    wrong = {
        "missing bucket": ("s3://no-such-bucket", {}, "the bucket does not exist"),
        "bad credentials": (None, {"AWS_SECRET_ACCESS_KEY": "wrong"}, "credentials"),
        "wrong endpoint": (None, {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, "not answer"),
    }
    for case, (url, env, reason) in wrong.items():
        location = parse_s3_location(url or new_area(seaweedfs).url)
        with environment(seaweedfs.aws_env(**env)):
            store = S3BlobStore(location, 64 * MiB)
            try:
                with pytest.raises(Unavailable) as failed:
                    await store.check()
            finally:
                await store.close()
        assert reason in failed.value.detail, (case, failed.value.detail)
        assert "\n" not in failed.value.detail


async def test_an_outage_is_unavailable_with_retry_after_and_passes(
    s3: S3BlobStore, seaweedfs: SeaweedFS
) -> None:
    data = os.urandom(1000)
    async with s3.staging(digest_of(data)) as staged:
        await staged.finish([data])
        assert await s3.publish(staged, digest_of(data)) is Published.CREATED
    with seaweedfs.stopped():
        for attempt in (s3.stat(digest_of(data)), read(s3, digest_of(data))):
            with pytest.raises(Unavailable) as failed:
                await attempt
            assert failed.value.status == 503 and failed.value.retry_after
    assert await read(s3, digest_of(data)) == data
