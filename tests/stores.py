"""Blob stores for tests: one factory per backend, by name.

The conformance suite (tests/test_store_conformance.py) runs every case against every store
named in :data:`STORE_KINDS`. A new backend adds a factory here: an async context manager that
takes the test's ``tmp_path`` and yields a fresh, empty store, plus a helper that corrupts a
stored blob behind the store's back (for the heal cases).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casd.config import parse_s3_location
from casd.digests import blob_relpath
from casd.stores import BlobStore, StagedBlob
from casd.stores.file import FileBlobStore, FileStagedBlob
from casd.stores.s3 import S3BlobStore, S3StagedBlob
from casd.stores.s3_upload import MIN_PART
from tests.seaweed import SeaweedFS, new_area


@dataclass(frozen=True)
class StoreKind:
    """How to make a store of one backend for a test, and reach around it."""

    name: str
    open: Callable[..., contextlib.AbstractAsyncContextManager[BlobStore]]
    # Replace the bytes stored under a digest, as bit rot or an operator would.
    overwrite: Callable[[BlobStore, str, bytes], Any]
    # Leave a staged blob behind as its writer's crash would (it is never finished or removed).
    abandon: Callable[[StagedBlob], Any]
    # The session fixture of the store's server, if it has one: passed to ``open`` after the
    # test's tmp_path.
    server: str | None = None


@contextlib.asynccontextmanager
async def file_store(tmp_path: Path) -> AsyncIterator[BlobStore]:
    data = tmp_path / "data"
    yield FileBlobStore(data / "blobs", data / "staging", data / "quarantine", data / "uploads")


async def overwrite_file(store: BlobStore, digest: str, data: bytes) -> None:
    assert isinstance(store, FileBlobStore)
    path = store.root / blob_relpath(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def abandon_file(staged: StagedBlob) -> None:
    assert isinstance(staged, FileStagedBlob)
    staged.close()  # its lock goes with the writer; the file stays
    staged.published = True  # so that leaving the staging context keeps it


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` inside the block (the S3 client reads the AWS variables)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def s3_store(
    tmp_path: Path, seaweed: SeaweedFS, part_size: int = MIN_PART
) -> AsyncIterator[BlobStore]:
    """An S3 store in a fresh prefix of the session's SeaweedFS, configured as a user would:
    the AWS variables and an s3:// location. Parts are S3's smallest (5 MiB, not 16), so that
    a test sends multipart uploads with little data."""
    area = new_area(seaweed)
    with environment(seaweed.aws_env()):
        location = parse_s3_location(area.url)
        store = S3BlobStore(location, buffer_bytes=64 * 1024 * 1024, part_size=part_size)
        try:
            yield store
        finally:
            await store.close()


async def overwrite_s3(store: BlobStore, digest: str, data: bytes) -> None:
    assert isinstance(store, S3BlobStore)
    client = await store.client()
    await client.put_object(Bucket=store.bucket, Key=store.blob_key(digest), Body=data)


async def abandon_s3(staged: StagedBlob) -> None:
    """What a node's crash leaves: an upload begun in the store, its writer gone."""
    assert isinstance(staged, S3StagedBlob)
    upload = staged.upload
    await upload.start_multipart()
    upload.forget()  # the process that knew it is gone; leaving the context does nothing


STORE_KINDS: dict[str, StoreKind] = {
    "file": StoreKind("file", file_store, overwrite_file, abandon_file),
    "s3": StoreKind("s3", s3_store, overwrite_s3, abandon_s3, server="seaweedfs"),
}
