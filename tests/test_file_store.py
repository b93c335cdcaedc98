"""What only the file store has to get right: what an operator may leave in its directories,
and file-system errors that are not "missing"."""

from __future__ import annotations

from pathlib import Path

import pytest

from casd.digests import blob_relpath, digest_of
from casd.errors import Unavailable
from casd.stores.file import FileBlobStore


def open_store(data: Path) -> FileBlobStore:
    return FileBlobStore(data / "blobs", data / "staging", data / "quarantine", data / "uploads")


async def test_a_stray_directory_under_uploads_is_not_an_upload(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    (store.uploads_dir / "lost+found").mkdir()
    (store.uploads_dir / "copy of abc").mkdir()
    (store.uploads_dir / "abc123").mkdir()
    listed = [upload_id async for page in store.list_upload_ids() for upload_id in page]
    assert listed == ["abc123"]
    assert await store.list_segments("abc123") == []


async def test_a_delete_that_the_file_system_refuses_is_unavailable(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    digest = digest_of(b"a directory where the blob should be")
    path = store.root / blob_relpath(digest)
    (path / "inside").mkdir(parents=True)  # unlink() of a directory fails, not "missing"
    with pytest.raises(Unavailable, match="blob store error"):
        await store.delete(digest)
    assert path.is_dir()
    await store.delete(digest_of(b"never stored"))  # missing stays idempotent
