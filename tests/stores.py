"""Blob stores for tests: one factory per backend, by name.

The conformance suite (tests/test_store_conformance.py) runs every case against every store
named in :data:`STORE_KINDS`. A new backend adds a factory here: an async context manager that
takes the test's ``tmp_path`` and yields a fresh, empty store, plus a helper that corrupts a
stored blob behind the store's back (for the heal cases).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casd.digests import blob_relpath
from casd.stores import BlobStore, StagedBlob
from casd.stores.file import FileBlobStore, FileStagedBlob


@dataclass(frozen=True)
class StoreKind:
    """How to make a store of one backend for a test, and reach around it."""

    name: str
    open: Callable[[Path], contextlib.AbstractAsyncContextManager[BlobStore]]
    # Replace the bytes stored under a digest, as bit rot or an operator would.
    overwrite: Callable[[BlobStore, str, bytes], Any]
    # Leave a staged blob behind as its writer's crash would (it is never finished or removed).
    abandon: Callable[[StagedBlob], Any]


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


STORE_KINDS: dict[str, StoreKind] = {
    "file": StoreKind("file", file_store, overwrite_file, abandon_file),
}
