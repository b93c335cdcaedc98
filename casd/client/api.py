"""The :class:`Client`: blobs, resumable uploads and verified downloads (names: in
:class:`casd.client.names.NameCalls`, which it extends)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import IO, Any

import aiohttp
import blake3
from yarl import URL

from casd import wire
from casd.client.errors import (
    TRANSPORT_ERRORS,
    LocalFileError,
    offset_header,
    raise_for_problem,
    unreachable,
)
from casd.client.files import (
    Download,
    Progress,
    Throttle,
    buffers,
    file_chunks,
    hash_file,
    local,
    stream_chunks,
)
from casd.client.names import NameCalls
from casd.client.records import StoredBlob, parsed, stored
from casd.client.retry import Retry, RetryNote
from casd.client.state import FileIdentity, UploadJournal
from casd.digests import parse_digest
from casd.errors import (
    BlobNotFound,
    CasdError,
    DigestMismatch,
    InvalidRequest,
    MismatchingUploadOffset,
    Unavailable,
    UploadNotFound,
)
from casd.wire import DIGEST_PREFIX

# Files up to this size go up in one PUT; larger ones through a resumable upload.
SMALL_FILE_LIMIT = 8 * 1024 * 1024


class Client(NameCalls):
    """A casd client. Use as ``async with Client(url, token) as casd``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        retry: Retry | None = None,
        small_file_limit: int = SMALL_FILE_LIMIT,
        timeout: float | None = None,
        on_retry: RetryNote | None = None,
        limit_rate: int | None = None,
        journal: UploadJournal | None = None,
    ) -> None:
        """``timeout``: seconds to connect and, once connected, without a byte (default 30
        and 300); ``on_retry`` hears of every retry; ``limit_rate``: bytes per second of each
        transfer; ``journal``: remember uploads so that a later process resumes them."""
        super().__init__(
            url, token, session=session, retry=retry, timeout=timeout, on_retry=on_retry
        )
        self.small_file_limit = small_file_limit
        self.limit_rate = limit_rate
        self.journal = journal

    # --- blobs ---

    async def blob_size(self, digest: str) -> int | None:
        """The size of a stored blob, None if it is not stored."""
        try:
            _, _, headers = await self.retrying(
                lambda: self.request_json("HEAD", self.endpoint(f"/v1/blobs/{digest}"))
            )
        except BlobNotFound:
            return None
        return int(headers["Content-Length"])

    async def put_bytes(self, data: bytes) -> StoredBlob:
        digest = DIGEST_PREFIX + blake3.blake3(data).hexdigest()
        status, body, _ = await self.retrying(
            lambda: self.request_json(
                "PUT", self.endpoint(f"/v1/blobs/{digest}"), data=data, ok=(200, 201)
            )
        )
        return stored(body, status)

    async def put_file(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        hashing: Progress | None = None,
    ) -> StoredBlob:
        """Store a file's bytes; small files in one PUT, large ones through a resumable upload
        (with a journal, one that a later process resumes: the file is not even hashed again).
        ``hashing`` hears how the hashing goes, ``progress`` how the sending goes."""
        source = Path(path)
        identity = await asyncio.to_thread(FileIdentity.of, source)
        record = self.journal.find(self.url, identity) if self.journal else None
        if record is not None:
            digest, size = record.digest, identity.size
        else:
            digest, size = await asyncio.to_thread(hash_file, source, hashing)
        if size <= self.small_file_limit:
            return await self.retrying(lambda: self._put_small(source, digest, size, progress))
        stored = await self.blob_size(digest)
        if stored is not None:
            self._forget(identity)
            if progress:
                progress(size, size)
            return StoredBlob(digest, stored)
        if record is not None:
            try:
                return await self._upload(record.upload_url, source, identity, digest, progress)
            except UploadNotFound:
                pass  # finished meanwhile, expired or cancelled: start anew
        upload_url = await self.start_upload(size, digest)
        if self.journal:
            self.journal.remember(self.url, identity, upload_url, digest)
        return await self._upload(upload_url, source, identity, digest, progress)

    async def _upload(
        self,
        upload_url: str,
        source: Path,
        identity: FileIdentity,
        digest: str,
        progress: Progress | None,
    ) -> StoredBlob:
        """Resume an upload; forget its record unless it may still be resumed later."""
        try:
            blob = await self.resume_upload(upload_url, source, digest=digest, progress=progress)
        except CasdError as error:
            if not isinstance(error, Unavailable):
                self._forget(identity)
            raise
        self._forget(identity)
        return blob

    def _forget(self, identity: FileIdentity) -> None:
        if self.journal:
            self.journal.forget(self.url, identity)

    async def put_stream(self, stream: IO[bytes]) -> StoredBlob:
        """Store what a stream (stdin) holds in one ``POST /v1/blobs``; the server's digest
        is checked against the one computed on the way. Not retried: a stream is read once."""
        hasher = blake3.blake3()
        counted = [0]
        chunks = stream_chunks(stream, hasher, counted, Throttle(self.limit_rate))
        status, body, _ = await self.request_json(
            "POST", self.endpoint("/v1/blobs"), data=chunks, ok=(200, 201)
        )
        digest = DIGEST_PREFIX + hasher.hexdigest()
        blob = parsed(wire.Blob, body)
        if (blob.digest, blob.size) != (digest, counted[0]):
            raise DigestMismatch(
                f"the server stored {blob.digest} ({blob.size} bytes), but {counted[0]}"
                f" bytes hashing to {digest} were sent"
            )
        return StoredBlob(digest, counted[0], created=status == 201)

    async def _put_small(
        self, source: Path, digest: str, size: int, progress: Progress | None
    ) -> StoredBlob:
        status, body, _ = await self.request_json(
            "PUT",
            self.endpoint(f"/v1/blobs/{digest}"),
            data=file_chunks(source, 0, size, progress, Throttle(self.limit_rate)),
            headers={"Content-Length": str(size)},
            expect100=True,
            ok=(200, 201),
        )
        if progress:
            progress(size, size)
        return stored(body, status)

    # --- resumable uploads ---

    async def start_upload(self, size: int | None = None, digest: str | None = None) -> str:
        """Create a resumable upload (``POST /v1/uploads``); its URL."""
        headers = {"Content-Length": "0"}
        if size is not None:
            headers[wire.UPLOAD_LENGTH] = str(size)
        if digest is not None:
            headers[wire.CASD_DIGEST] = parse_digest(digest)
        _, _, answer = await self.retrying(
            lambda: self.request_json(
                "POST", self.endpoint("/v1/uploads"), headers=headers, ok=(201,)
            )
        )
        return str(self.endpoint(answer["Location"]))

    async def upload_offset(self, upload_url: str) -> int:
        """How many bytes of the upload the server holds (``HEAD``)."""
        _, _, headers = await self.request_json(
            "HEAD", URL(upload_url, encoded=True), ok=(204,), not_found=UploadNotFound
        )
        return int(headers[wire.UPLOAD_OFFSET])

    async def resume_upload(
        self,
        upload_url: str,
        path: str | os.PathLike[str],
        *,
        digest: str | None = None,
        progress: Progress | None = None,
    ) -> StoredBlob:
        """Send the rest of a file to an upload from the offset the server reports, retrying
        with backoff (``self.retry.attempts`` failures in a row that made no progress), until
        the blob is stored."""
        source = Path(path)
        size = (await asyncio.to_thread(source.stat)).st_size
        failures, offset, best = 0, None, -1
        failure: CasdError
        while True:
            try:
                if offset is None:
                    offset = await self.upload_offset(upload_url)
                if offset > best:
                    failures, best = 0, offset
                if progress:
                    progress(offset, size)
                return await self._patch_rest(upload_url, source, offset, size, digest, progress)
            except MismatchingUploadOffset as error:
                offset, failure = offset_header(error), error
            except UploadNotFound:
                # An earlier request may have finished it while its answer was lost.
                if digest is not None and await self.blob_size(digest) == size:
                    return StoredBlob(digest, size)
                raise
            except Unavailable as error:
                offset, failure = None, error
            except InvalidRequest as error:
                if error.offset is None:
                    raise
                # The body broke off on the way (a proxy, say); the server kept what came.
                offset, failure = offset_header(error), error
            failures += 1
            await self.backoff(failures, failure, f"the upload to {upload_url} made no progress")

    async def _patch_rest(
        self,
        upload_url: str,
        source: Path,
        offset: int,
        size: int,
        digest: str | None,
        progress: Progress | None,
    ) -> StoredBlob:
        headers = {
            wire.UPLOAD_OFFSET: str(offset),
            wire.UPLOAD_COMPLETE: wire.TRUE,
            "Content-Length": str(size - offset),
            "Content-Type": wire.PARTIAL_UPLOAD,
        }
        if digest is not None:
            headers[wire.CASD_DIGEST] = digest
        status, body, _ = await self.request_json(
            "PATCH",
            URL(upload_url, encoded=True),
            data=file_chunks(source, offset, size, progress, Throttle(self.limit_rate)),
            headers=headers,
            expect100=True,
            ok=(200, 201),  # 200: the upload was complete already (an answer lost before)
        )
        return stored(body, status)

    async def cancel_upload(self, upload: str) -> None:
        """Cancel an upload, given by its URL or its id; a journal forgets it."""
        upload_url = upload if "/" in upload else str(self.endpoint(f"/v1/uploads/{upload}"))
        await self.request_json(
            "DELETE", URL(upload_url, encoded=True), ok=(204,), not_found=UploadNotFound
        )
        if self.journal:
            self.journal.forget_url(upload_url)

    async def uploads(self) -> list[dict[str, Any]]:
        """The caller's uploads (``GET /v1/uploads``), each with its ``url``."""
        _, body, _ = await self.retrying(
            lambda: self.request_json("GET", self.endpoint("/v1/uploads"))
        )
        listed = [parsed(wire.UploadSummary, upload) for upload in body["uploads"]]
        return [
            upload.to_json() | {"url": str(self.endpoint(f"/v1/uploads/{upload.id}"))}
            for upload in listed
        ]

    # --- downloads ---

    async def get(
        self, ref: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> StoredBlob:
        """Download a name or a digest to ``path``, verified."""
        digest = ref if ref.startswith(DIGEST_PREFIX) else (await self.resolve(ref)).digest
        return await self.get_blob(digest, path, progress=progress)

    async def get_blob(
        self, digest: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> StoredBlob:
        """Download a blob to ``path``, verified against its digest. A mismatch raises
        :class:`DigestMismatch` and leaves no file; ``path`` is replaced only when verified.

        The bytes go to a partial file next to ``path`` named after the digest, kept when the
        transfer breaks off (or the process dies): the next download of that digest to that
        path hashes what it holds and fetches only the rest, with a ``Range``."""
        parse_digest(digest)
        target = Path(path)
        partial = target.with_name(f".{target.name}.{digest[7:23]}.casd-part")
        download = await asyncio.to_thread(Download.partial, partial)
        if download is None:  # another process fills that one: use one of our own
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.casd-part")
            download = await asyncio.to_thread(Download.partial, partial)
            assert download is not None
        try:
            size = await self._download(digest, download, progress)
            await asyncio.to_thread(os.replace, partial, target)
        except (Unavailable, LocalFileError, OSError, KeyboardInterrupt, asyncio.CancelledError):
            raise  # keep the partial file: a later run resumes it
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            await asyncio.to_thread(download.close)
        return StoredBlob(digest, size)

    async def get_stream(
        self, digest: str, stream: IO[bytes], *, progress: Progress | None = None
    ) -> StoredBlob:
        """Write a blob to a stream (stdout) as it arrives; verified at the end, when the
        bytes are out already: a mismatch raises :class:`DigestMismatch` after them."""
        parse_digest(digest)
        size = await self._download(digest, Download(stream, restartable=False), progress)
        return StoredBlob(digest, size)

    async def _download(self, digest: str, download: Download, progress: Progress | None) -> int:
        if not (download.size and download.digest == digest):  # a finished partial file
            failures, best = 0, download.size
            while (error := await self._download_rest(digest, download, progress)) is not None:
                failures, best = (0, download.size) if download.size > best else (failures, best)
                failures += 1
                await self.backoff(failures, error, f"downloading {digest}")
            await local(download.finish)
        complete = download.total is None or download.size == download.total
        if not complete or download.digest != digest:
            raise DigestMismatch(
                f"the bytes received hash to {download.digest} ({download.size} bytes),"
                f" not {digest}; nothing was kept"
            )
        return download.size

    async def _download_rest(
        self, digest: str, download: Download, progress: Progress | None
    ) -> Unavailable | None:
        """Fetch what is missing (a range when resuming); the error if the transfer broke."""
        headers = self.headers({"Range": f"bytes={download.size}-"} if download.size else None)
        url = self.endpoint(f"/v1/blobs/{digest}")
        throttle = Throttle(self.limit_rate)
        try:
            async with self.session.get(url, headers=headers) as response:
                if response.status == 416 and download.size:
                    await local(download.reset)
                    return Unavailable("the partial file is longer than the blob; starting over")
                if response.status not in (200, 206):
                    await raise_for_problem(response)
                await local(download.begin, response.status, response.headers)
                async for buffer in buffers(response.content):
                    await local(download.write, buffer)
                    await throttle.pace(len(buffer))
                    if progress and download.total is not None:
                        progress(download.size, download.total)
                return None
        except Unavailable as error:
            return error
        except TRANSPORT_ERRORS as error:
            return unreachable(self.url, error)
