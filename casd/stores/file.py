"""The file store: blobs as files under the data directory (the default backend).

Layout: ``blobs/blake3/<hex[0:2]>/<hex>`` (:func:`casd.digests.blob_relpath`), private staging
files in ``staging/`` (a writer holds an flock on its file while it lives), a resumable
upload's segments in ``uploads/<id>/<epoch>.<serial>``, quarantined bytes in ``quarantine/``.
A publication is a hard link (it never replaces: EEXIST is :attr:`Published.EXISTED`), or a
rename when the caller replaces suspect bytes; the contract is :mod:`casd.stores.base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import logging
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

from casd.digests import blob_relpath, hex_of
from casd.errors import InsufficientStorage, Unavailable
from casd.stores.base import (
    Capabilities,
    Published,
    Segment,
    StagedBlob,
    UnfinishedPublication,
    is_segment_name,
)
from casd.wire import DIGEST_ALGORITHM, DIGEST_PREFIX

log = logging.getLogger(__name__)

READ_CHUNK = 2 * 1024 * 1024
IOV_MAX = 1024  # buffers one writev takes at most (Linux)
# A big upload starts the write-back of what it wrote every so many bytes, so that the disk
# works while the rest arrives and the fsync at the end has little left to do.
WRITEBACK_STEP = 8 * 1024 * 1024
# An upload staged before segments existed (one file, uploads/<id>) becomes segment "0.0".
LEGACY_SEGMENT = "0.0"
# The publication journal: before staged bytes appear under their digest they get a second name
# in the staging directory, "<hex>.<unique>.publishing", removed once the blob's row is
# committed (:meth:`FileBlobStore.settle`). One left behind by a crash between the two names
# the file without a row to adopt; its bytes were verified and fsynced before they were linked.
PUBLISHING = ".publishing"
# With less free space than this the store counts as full (readiness says so): no upload of
# any size can be staged, fsynced and published reliably any more.
FULL_BELOW = 1024 * 1024
# Digests per page of list_digests().
LIST_PAGE = 1000


def _storage_error(error: OSError) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage()
    return Unavailable(f"blob store error: {error.strerror}")


class FileStagedBlob:
    """A staging file, locked with flock for as long as its writer lives."""

    def __init__(
        self, path: Path, mode: str = "xb", *, lazy: bool = False, durable_name: bool = False
    ) -> None:
        self.path = path
        # A segment's name must outlive a crash like its bytes: its directories are fsynced too.
        self.durable_name = durable_name
        self.size = 0
        self.published = False
        self.journal: Path | None = None  # the publication's record, until settled
        self._written_back = 0
        self._mode = mode
        self._opened: BinaryIO | None = None
        if not lazy:
            self._open()

    @property
    def file(self) -> BinaryIO:
        """The file, created on first use: by then the caller is in an I/O thread already, so
        creating it costs the event loop nothing (and a small blob no extra thread hand-off)."""
        return self._opened or self._open()

    def _open(self) -> BinaryIO:
        try:
            if self.durable_name:
                self.path.parent.mkdir(exist_ok=True)
            file = cast(BinaryIO, self.path.open(self._mode))
        except FileExistsError:
            raise  # a name used twice: the caller's mistake, not the store's
        except OSError as error:
            raise _storage_error(error) from error
        # The lock tells the stale-staging sweep of any process that this file is alive.
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            file.close()
            raise
        self._opened = file
        return file

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        await asyncio.to_thread(self.write_blocking, data)

    def write_blocking(self, data: bytes | memoryview | Sequence[bytes]) -> None:
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                self.file.write(data)
                self.size += len(data)
            elif data:
                self.file.flush()
                self.size += _write_all(self.file.fileno(), data)
            if self.size - self._written_back >= WRITEBACK_STEP:
                self.file.flush()
                _start_writeback(self.file.fileno(), self._written_back, self.size)
                self._written_back = self.size
        except OSError as error:
            raise _storage_error(error) from error

    async def finish(self, tail: Sequence[bytes] = ()) -> None:
        await asyncio.to_thread(self._write_durably, tail)

    def _write_durably(self, tail: Sequence[bytes]) -> None:
        self.write_blocking(tail)
        self.make_durable()

    def make_durable(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.durable_name:
                _fsync_directory(self.path.parent)
                _fsync_directory(self.path.parent.parent)
        except OSError as error:
            raise _storage_error(error) from error

    def discard(self) -> None:
        if self._opened is None:
            return  # never created
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._opened.close()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()


class FileBlobReader:
    """An open blob file: its size, and the bytes of the range opened (first chunk read)."""

    def __init__(
        self,
        file: BinaryIO,
        size: int,
        start: int,
        end: int | None,
        observe: Callable[[bytes], object] | None,
        first: bytes,
    ) -> None:
        self.size = size
        self.file = file
        self._position = start
        self._end = end
        self._observe = observe
        self._first: bytes | None = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk, self._first = self._first, None
        want = _chunk_size(self._position, self._end)
        while chunk:
            self._position += len(chunk)
            yield chunk
            if len(chunk) < want:
                break  # a short read of a regular file: its end
            want = _chunk_size(self._position, self._end)
            chunk = await asyncio.to_thread(_read_chunk, self.file, want, self._observe)


class FileBlobStore:
    """Blobs as files: ``<root>/blake3/<hex[0:2]>/<hex>``, staged in a sibling directory."""

    def __init__(
        self, root: Path, staging_dir: Path, quarantine_dir: Path, uploads_dir: Path | None = None
    ) -> None:
        self.root = root
        self.staging_dir = staging_dir
        self.quarantine_dir = quarantine_dir
        self.uploads_dir = uploads_dir or staging_dir.with_name("uploads")
        for directory in (root, staging_dir, quarantine_dir, self.uploads_dir):
            directory.mkdir(parents=True, exist_ok=True)
        _adopt_legacy_uploads(self.uploads_dir)

    def path_of(self, digest: str) -> Path:
        return self.root / blob_relpath(digest)

    # --- ingest ---------------------------------------------------------------------------

    def staging(
        self, expected: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[FileStagedBlob]:
        # The expected digest does not matter here: a file is linked to any name at the end.
        return self._staged(FileStagedBlob(self.staging_dir / _staging_name(), lazy=True))

    @contextlib.asynccontextmanager
    async def _staged(self, staged: FileStagedBlob) -> AsyncIterator[FileStagedBlob]:
        try:
            yield staged
        finally:
            # Runs on errors and on cancellation (a client that went away) alike. A published
            # file is only closed (its bytes are durable already): no thread needed for that.
            if staged.published:
                staged.discard()
            else:
                await asyncio.shield(asyncio.to_thread(staged.discard))

    async def publish(
        self, staged: StagedBlob, digest: str, *, replace_suspect: bool = False
    ) -> Published:
        assert isinstance(staged, FileStagedBlob)
        target = self.path_of(digest)
        return await asyncio.to_thread(self._publish_blocking, staged, target, replace_suspect)

    def _publish_blocking(
        self, staged: FileStagedBlob, target: Path, replace_suspect: bool
    ) -> Published:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The journal: a second name that outlives a crash until the row is committed.
            journal = self.staging_dir / f"{target.name}.{_unique()}{PUBLISHING}"
            staged.path.rename(journal)
            staged.published = True  # the staged name is gone either way
            if replace_suspect:
                _link_or_replace(journal, target, self.staging_dir)
            else:
                try:
                    os.link(journal, target)
                except FileExistsError:
                    journal.unlink()  # never replace: the bytes there stay, ours go
                    return Published.EXISTED
            staged.journal = journal
            _fsync_directory(target.parent)
            return Published.CREATED
        except OSError as error:
            raise _storage_error(error) from error

    async def settle(self, staged: StagedBlob) -> None:
        assert isinstance(staged, FileStagedBlob)
        # One unlink of a name (no data) and a close: cheaper here than a hand-off to the I/O
        # threads, where it would queue behind other uploads' fsyncs.
        if staged.journal is not None:
            with contextlib.suppress(FileNotFoundError):
                staged.journal.unlink()
            staged.journal = None
        staged.close()  # its lock told everyone that the publication was in progress

    def assemble(
        self, upload_id: str, segments: Sequence[Segment], expected: str
    ) -> contextlib.AbstractAsyncContextManager[FileStagedBlob]:
        return self._assembled(upload_id, segments)

    @contextlib.asynccontextmanager
    async def _assembled(
        self, upload_id: str, segments: Sequence[Segment]
    ) -> AsyncIterator[FileStagedBlob]:
        path = self.staging_dir / _staging_name()
        sources = [
            (self._segment_path(upload_id, segment.name), segment.size) for segment in segments
        ]
        try:
            staged = await asyncio.to_thread(_concatenate, sources, path)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise _storage_error(error) from error
        async with self._staged(staged) as assembled:
            yield assembled

    # --- crash recovery of publications ----------------------------------------------------

    async def unfinished_publications(self) -> list[UnfinishedPublication]:
        return await asyncio.to_thread(self._unfinished_publications_blocking)

    def _unfinished_publications_blocking(self) -> list[UnfinishedPublication]:
        found = []
        for journal in self.staging_dir.glob(f"*{PUBLISHING}"):
            hexdigest = journal.name.partition(".")[0]
            if len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
                continue
            try:
                file = journal.open("rb")
            except FileNotFoundError:
                continue
            try:  # a live publisher holds the lock of its staged file
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                continue
            size = os.fstat(file.fileno()).st_size
            found.append(UnfinishedPublication(DIGEST_PREFIX + hexdigest, size, (journal, file)))
        return found

    async def is_published(self, publication: UnfinishedPublication) -> bool:
        _, file = _journal_of(publication)

        def same_file() -> bool:
            try:
                target = self.path_of(publication.digest).stat()
            except FileNotFoundError:
                return False
            return os.path.samestat(os.fstat(file.fileno()), target)

        return await asyncio.to_thread(same_file)

    async def release_publication(self, publication: UnfinishedPublication, done: bool) -> None:
        journal, file = _journal_of(publication)

        def release() -> None:
            if done:
                with contextlib.suppress(FileNotFoundError):
                    journal.unlink()
            file.close()

        await asyncio.to_thread(release)

    # --- reads -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(
        self,
        digest: str,
        start: int = 0,
        end: int | None = None,
        observe: Callable[[bytes], object] | None = None,
    ) -> AsyncIterator[FileBlobReader]:
        want = _chunk_size(start, end)
        # Open, stat, seek and read the first chunk in one thread hand-off (a small blob: the
        # only one).
        try:
            file, size, first = await asyncio.to_thread(
                self._open_and_read, digest, start, want, observe
            )
        except FileNotFoundError:
            raise
        except OSError as error:
            raise _storage_error(error) from error
        try:
            yield FileBlobReader(file, size, start, end, observe, first)
        finally:
            file.close()

    def _open_and_read(
        self, digest: str, start: int, size: int, observe: Callable[[bytes], object] | None
    ) -> tuple[BinaryIO, int, bytes]:
        file = self.path_of(digest).open("rb")
        try:
            stored = os.fstat(file.fileno()).st_size
            file.seek(start)
            return file, stored, _read_chunk(file, size, observe)
        except BaseException:
            file.close()
            raise

    async def stat(self, digest: str) -> int | None:
        try:
            stat = await asyncio.to_thread(self.path_of(digest).stat)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise _storage_error(error) from error
        return stat.st_size

    # --- removal ---------------------------------------------------------------------------

    async def delete(self, digest: str) -> None:
        try:
            await asyncio.to_thread(self.path_of(digest).unlink)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise _storage_error(error) from error

    async def quarantine(self, digest: str) -> str | None:
        target = self.quarantine_dir / f"{hex_of(digest)}.{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.to_thread(self.path_of(digest).replace, target)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise _storage_error(error) from error
        return str(target)

    async def list_digests(self, after: str = "") -> AsyncIterator[list[str]]:
        fanouts = await asyncio.to_thread(_sorted_names, self.root / DIGEST_ALGORITHM)
        start = hex_of(after)[:2] if after else ""
        for fanout in fanouts:
            if fanout < start:
                continue
            names = await asyncio.to_thread(_sorted_names, self.root / DIGEST_ALGORITHM / fanout)
            digests = [DIGEST_PREFIX + name for name in names]
            digests = [digest for digest in digests if digest > after]
            for page in range(0, len(digests), LIST_PAGE):
                yield digests[page : page + LIST_PAGE]

    # --- resumable uploads: segments -------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> Path:
        if not (upload_id.isascii() and upload_id.isalnum()):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.uploads_dir / upload_id

    def _segment_path(self, upload_id: str, name: str) -> Path:
        if not is_segment_name(name):
            raise ValueError(f"not a segment name: {name!r}")
        return self._upload_dir(upload_id) / name

    @contextlib.asynccontextmanager
    async def segment_writer(self, upload_id: str, name: str) -> AsyncIterator[FileStagedBlob]:
        path = self._segment_path(upload_id, name)
        staged = await asyncio.to_thread(FileStagedBlob, path, "xb", durable_name=True)
        try:
            yield staged
        finally:
            await asyncio.shield(asyncio.to_thread(staged.close))

    async def read_segments(
        self, upload_id: str, segments: Sequence[Segment]
    ) -> AsyncIterator[bytes]:
        for segment in segments:
            path = self._segment_path(upload_id, segment.name)
            file = await asyncio.to_thread(path.open, "rb")
            try:
                remaining = segment.size
                while remaining > 0:
                    chunk = await asyncio.to_thread(file.read, min(READ_CHUNK, remaining))
                    if not chunk:
                        raise FileNotFoundError(f"segment {segment.name} of {upload_id} is short")
                    remaining -= len(chunk)
                    yield chunk
            finally:
                file.close()

    async def delete_segments(self, upload_id: str, names: Sequence[str] | None = None) -> None:
        directory = self._upload_dir(upload_id)
        if names is None:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
            return
        paths = [self._segment_path(upload_id, name) for name in names]
        await asyncio.to_thread(_unlink_all, paths)

    async def list_upload_ids(self) -> AsyncIterator[list[str]]:
        names = await asyncio.to_thread(_sorted_names, self.uploads_dir, directories=True)
        # Only what an upload id can be: a stray directory an operator left is not an upload.
        names = [name for name in names if name.isascii() and name.isalnum()]
        for page in range(0, len(names), LIST_PAGE):
            yield names[page : page + LIST_PAGE]

    async def list_segments(self, upload_id: str) -> list[Segment]:
        return await asyncio.to_thread(_segments_in, self._upload_dir(upload_id))

    # --- housekeeping ----------------------------------------------------------------------

    async def sweep_staging(self, older_than: float) -> int:
        return await asyncio.to_thread(self._sweep_staging_blocking, older_than)

    def _sweep_staging_blocking(self, older_than: float) -> int:
        """Remove staging files that no live writer holds a lock on (left by a crash)."""
        removed = 0  # whatever their age: a live writer holds the lock of its file
        for path in self.staging_dir.iterdir():
            if path.name.endswith(PUBLISHING):
                continue  # the record of a publication: see unfinished_publications()
            try:
                with path.open("rb") as file:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                    removed += 1
            except (BlockingIOError, FileNotFoundError):
                continue
        if removed:
            log.info("removed %d stale staging files", removed)
        return removed

    async def check(self) -> Capabilities:
        ok = await asyncio.to_thread(os.access, self.root, os.W_OK | os.X_OK)
        if not ok:
            raise Unavailable("blob store directory is not writable")
        space = await asyncio.to_thread(os.statvfs, self.staging_dir)
        free_bytes = space.f_bavail * space.f_frsize
        out_of_inodes = space.f_files > 0 and space.f_favail == 0
        return Capabilities(
            backend="file",
            writable=free_bytes >= FULL_BELOW and not out_of_inodes,
            conditional_create=True,  # link(2) refuses an existing name
            detail=str(self.root),
        )


def _adopt_legacy_uploads(uploads_dir: Path) -> None:
    """Move the one-file staging of uploads from before segments (``uploads/<id>``) to their
    segment ``uploads/<id>/0.0``, which migration 0010 recorded with the upload's offset.
    Safe to run in several processes at once, and again after a crash half-way."""
    for entry in os.scandir(uploads_dir):
        name = entry.name
        if entry.is_file() and name.isalnum():
            with contextlib.suppress(FileNotFoundError):
                Path(entry.path).rename(uploads_dir / f"{name}.legacy")
            name = f"{name}.legacy"
        if not name.endswith(".legacy") or not name.removesuffix(".legacy").isalnum():
            continue
        directory = uploads_dir / name.removesuffix(".legacy")
        directory.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (uploads_dir / name).rename(directory / LEGACY_SEGMENT)
            _fsync_directory(directory)
            _fsync_directory(uploads_dir)


def _journal_of(publication: UnfinishedPublication) -> tuple[Path, BinaryIO]:
    journal, file = cast(tuple[Path, BinaryIO], publication.handle)
    return journal, file


def _sorted_names(directory: Path, *, directories: bool = False) -> list[str]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return sorted(entry.name for entry in entries if not directories or entry.is_dir())


def _segments_in(directory: Path) -> list[Segment]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if not is_segment_name(entry.name):
            continue
        try:
            found.append(Segment(entry.name, entry.stat().st_size))
        except FileNotFoundError:  # deleted meanwhile by another process's sweep
            continue
    return sorted(found, key=lambda segment: tuple(map(int, segment.name.split("."))))


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _concatenate(sources: Sequence[tuple[Path, int]], path: Path) -> FileStagedBlob:
    """A new staging file at ``path`` holding the first ``size`` bytes of every source in
    order, durable. One whole source is linked, not copied: a recorded segment never changes."""
    if len(sources) == 1 and sources[0][0].stat().st_size == sources[0][1]:
        os.link(sources[0][0], path)
        staged = FileStagedBlob(path, "ab")
        staged.size = sources[0][1]
        return staged
    staged = FileStagedBlob(path, "xb")
    try:
        for source, size in sources:
            with source.open("rb") as file:
                if os.fstat(file.fileno()).st_size < size:
                    raise FileNotFoundError(f"{source} holds fewer than {size} bytes")
                _copy_range(file, staged, size)
        staged.make_durable()
    except BaseException:
        staged.discard()
        raise
    return staged


def _copy_range(source: BinaryIO, staged: FileStagedBlob, size: int) -> None:
    """Append the first ``size`` bytes of ``source`` in the kernel (a reflink where the file
    system shares blocks), falling back to reading and writing where it cannot."""
    target = staged.file
    target.flush()
    copied = 0
    with contextlib.suppress(OSError):
        while copied < size:
            done = os.copy_file_range(source.fileno(), target.fileno(), size - copied, copied)
            if done == 0:
                break
            copied += done
    staged.size += copied
    target.seek(0, os.SEEK_END)
    source.seek(copied)
    while copied < size:
        chunk = source.read(min(READ_CHUNK, size - copied))
        if not chunk:
            raise FileNotFoundError("a segment became shorter while it was copied")
        staged.write_blocking(chunk)
        copied += len(chunk)


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the fsync does all the work, as it would anyway
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing dirty pages of the range back; wait for nothing


def _start_writeback(fd: int, start: int, end: int) -> None:
    """A hint to the kernel (its result does not matter: the fsync before publishing does)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, start, end - start, _SYNC_FILE_RANGE_WRITE)


def _chunk_size(position: int, end: int | None) -> int:
    return READ_CHUNK if end is None else min(READ_CHUNK, end - position)


def _write_all(fd: int, parts: Sequence[bytes]) -> int:
    """Write every byte of ``parts`` in order, in as few system calls as the kernel allows."""
    views = [memoryview(part) for part in parts if part]
    total = sum(len(view) for view in views)
    while views:
        written = os.writev(fd, views[:IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]
    return total


# Staging names: unique across processes and restarts without a getrandom() call per upload,
# which a profile showed costing the event loop 8% of its time on a virtual machine.
_STAGING_PREFIX = secrets.token_hex(8)
_staging_serial = itertools.count()


def _unique() -> str:
    return f"{_STAGING_PREFIX}-{os.getpid()}-{next(_staging_serial)}"


def _staging_name() -> str:
    return f"{_unique()}.part"


def _link_or_replace(source: Path, target: Path, scratch: Path) -> None:
    """Give ``source``'s file the name ``target`` too, atomically replacing what is there
    (suspect bytes: only with ``replace_suspect``)."""
    try:
        os.link(source, target)
    except FileExistsError:
        temporary = scratch / f"{_unique()}.link"
        os.link(source, temporary)
        try:
            temporary.replace(target)
        finally:
            # Left if the rename did nothing: POSIX renames nothing when both names are links
            # to the same file already (a second publication of the same staged bytes).
            temporary.unlink(missing_ok=True)


def _read_chunk(file: BinaryIO, size: int, observe: Callable[[bytes], object] | None) -> bytes:
    chunk = file.read(size) if size > 0 else b""
    if observe is not None and chunk:
        observe(chunk)
    return chunk


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
