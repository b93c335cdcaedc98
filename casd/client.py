"""An async client for casd on aiohttp's client: blobs, resumable uploads, names.

::

    async with Client("http://127.0.0.1:8480", token) as casd:
        blob = await casd.put_file("disk.qcow2")
        await casd.tag("prod/disk.qcow2", blob.digest)
        await casd.get("prod/disk.qcow2", "copy.qcow2")

Small files go up in one ``PUT`` with ``Expect: 100-continue`` (nothing is sent when the blob
is stored already); large ones through a resumable upload that survives dropped connections
and server restarts, resuming from the offset the server reports; with an
:class:`~casd.client_state.UploadJournal`, a later process resumes it too. Downloads are hashed
while they are written to a partial file next to the target (named after the digest, kept when
the transfer breaks, resumed with ``Range`` by the next download), which becomes the target only
once verified. Retries back off, are announced to ``on_retry``, and never repeat what cannot
succeed (TLS failures, 4xx answers but 408 and 429).
Every failure raises a :class:`casd.errors.CasdError` subclass carrying the problem's ``code``
(``error.status`` is the HTTP status, ``error.extra`` the rest of the problem body, such as
``current`` for ``precondition-failed``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import aiohttp
import blake3
from yarl import URL

from casd import wire
from casd.client_state import FileIdentity, UploadJournal
from casd.client_support import (
    TRANSPORT_ERRORS,
    Download,
    LocalFileError,
    Progress,
    Retry,
    RetryNote,
    StoredBlob,
    Throttle,
    TlsFailure,
    buffers,
    error_from_problem,
    file_chunks,
    hash_file,
    local,
    offset_header,
    parsed,
    raise_for_problem,
    retry_after,
    stored,
    stream_chunks,
    unreachable,
)
from casd.digests import parse_digest
from casd.errors import (
    BlobNotFound,
    CasdError,
    DigestMismatch,
    InvalidRequest,
    MismatchingUploadOffset,
    NameNotFound,
    PreconditionFailed,
    Unavailable,
    UploadNotFound,
)
from casd.wire import DIGEST_PREFIX, HistoryEntry, NameRecord, TokenInfo

T = TypeVar("T")

# Files up to this size go up in one PUT; larger ones through a resumable upload.
SMALL_FILE_LIMIT = 8 * 1024 * 1024

__all__ = [
    "Client",
    "HistoryEntry",
    "NameRecord",
    "Progress",
    "Retry",
    "StoredBlob",
    "error_from_problem",
]


class Client:
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
        self.url = url.rstrip("/")
        self.token = token
        self.retry = retry or Retry()
        self.small_file_limit = small_file_limit
        self.timeout = timeout
        self.on_retry = on_retry
        self.limit_rate = limit_rate
        self.journal = journal
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No overall limit: a 2.5 GB upload over a slow link takes hours.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeout or 30, sock_read=self.timeout or 300
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return headers | (extra or {})

    def endpoint(self, path: str) -> URL:
        # encoded=True: names are sent as given (a name like 'a/../b' is the server's to refuse).
        return URL(self.url + path, encoded=True)

    def name_endpoint(self, prefix: str, name: str) -> URL:
        return self.endpoint(prefix + quote(name, safe="/"))

    async def request_json(
        self,
        method: str,
        url: URL,
        *,
        ok: tuple[int, ...] = (200,),
        not_found: type[CasdError] = BlobNotFound,
        **kwargs: Any,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request; its status, JSON body and headers, or the typed error."""
        kwargs["headers"] = self.headers(kwargs.get("headers"))
        try:
            async with self.session.request(method, url, **kwargs) as response:
                if response.status not in ok:
                    await raise_for_problem(response, not_found)
                body = await response.json(content_type=None) if response.status != 204 else None
                return response.status, body, dict(response.headers)
        except TRANSPORT_ERRORS as error:
            raise unreachable(self.url, error) from error

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` again with backoff while the server is unreachable or unavailable."""
        failures = 0
        while True:
            try:
                return await attempt()
            except Unavailable as error:
                failures += 1
                await self.backoff(failures, error)

    async def backoff(self, failures: int, error: CasdError, giving_up: str = "") -> None:
        """Wait before try ``failures + 1``; raise when the tries are used up or ``error``
        cannot go away by trying again (TLS). ``giving_up`` prefixes the final message."""
        if isinstance(error, TlsFailure):
            raise error
        if failures >= self.retry.attempts:
            if not giving_up:
                raise error
            raise Unavailable(
                f"{giving_up}: gave up after {failures} tries: {error.detail}"
            ) from error
        delay = retry_after(error) or self.retry.delay(failures)
        if self.on_retry is not None:
            self.on_retry(failures, self.retry.attempts, delay, error)
        await asyncio.sleep(delay)

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
                if wire.UPLOAD_OFFSET not in error.headers:
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

    # --- names ---

    async def resolve(self, name: str) -> NameRecord:
        """The record of a name."""
        _, body, _ = await self.retrying(
            lambda: self.request_json("GET", self.name_endpoint("/v1/names/", name))
        )
        return parsed(NameRecord, body)

    async def set_name(
        self,
        name: str,
        digest: str,
        *,
        version: int | None = None,
        create: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> NameRecord:
        """Point a name at a digest if it is still at ``version`` (or, with ``create``, if it
        does not exist): compare-and-swap. Else :class:`PreconditionFailed`, whose
        ``extra["current"]`` is the record as it is now."""
        headers = {"If-None-Match": "*"} if create else {}
        if version is not None:
            headers["If-Match"] = wire.version_etag(version)
        payload: dict[str, Any] = {"digest": digest}
        if metadata is not None:
            payload["metadata"] = metadata
        _, body, _ = await self.request_json(
            "PUT",
            self.name_endpoint("/v1/names/", name),
            json=payload,
            headers=headers,
            ok=(200, 201),
        )
        return parsed(NameRecord, body)

    async def update_name(
        self,
        name: str,
        change: Callable[[NameRecord | None], tuple[str, dict[str, Any] | None]],
        *,
        attempts: int = 20,
    ) -> NameRecord:
        """Read-modify-write: ``change(current)`` gives the new digest and metadata (None keeps
        the metadata); retried on ``412`` with the record the server reports as current."""
        current = await self.current(name)
        for _ in range(attempts):
            digest, metadata = change(current)
            try:
                if current is None:
                    return await self.set_name(name, digest, create=True, metadata=metadata)
                return await self.set_name(name, digest, version=current.version, metadata=metadata)
            except PreconditionFailed as error:
                found = error.extra.get("current")
                current = parsed(NameRecord, found) if found else None
        raise PreconditionFailed(f"{name} kept changing; gave up after {attempts} attempts")

    async def tag(
        self, name: str, digest: str, *, metadata: dict[str, Any] | None = None
    ) -> NameRecord:
        """Point a name at a digest, whatever it points at now (compare-and-swap, retried)."""
        return await self.update_name(name, lambda current: (digest, metadata))

    async def delete_name(self, name: str, *, version: int) -> None:
        await self.request_json(
            "DELETE",
            self.name_endpoint("/v1/names/", name),
            headers={"If-Match": wire.version_etag(version)},
            ok=(204,),
        )

    async def remove_name(self, name: str, *, version: int | None = None) -> int:
        """Delete a name at ``version`` (compare-and-swap), or whatever version it is at now
        (retried on ``412``); the version deleted."""
        if version is not None:
            await self.delete_name(name, version=version)
            return version
        for _ in range(20):
            current = await self.resolve(name)
            try:
                await self.delete_name(name, version=current.version)
                return current.version
            except PreconditionFailed:
                continue
        raise PreconditionFailed(f"{name} kept changing; gave up deleting it")

    async def rollback(self, name: str, *, to_version: int | None = None) -> NameRecord:
        """Point a name back at the digest (and metadata) of an earlier version: by default
        the newest one before the current whose digest differs. A compare-and-swap from the
        current version, recorded in the history like any change; :class:`PreconditionFailed`
        if the name changed meanwhile."""
        current = await self.resolve(name)
        earlier = await self._earlier(name, current, to_version)
        return await self.set_name(
            name, earlier.digest or "", version=current.version, metadata=earlier.metadata
        )

    async def _earlier(
        self, name: str, current: NameRecord, to_version: int | None
    ) -> HistoryEntry:
        if to_version is not None:
            entries = await self.history(name, limit=1, before=to_version + 1)
            if not entries or entries[0].version != to_version or entries[0].digest is None:
                raise NameNotFound(f"{name} has no version {to_version} to go back to")
            return entries[0]
        before: int | None = current.version
        while before is not None:
            entries = await self.history(name, limit=100, before=before)
            for entry in entries:
                if entry.digest is not None and entry.digest != current.digest:
                    return entry
            before = entries[-1].version if len(entries) == 100 else None
        raise NameNotFound(
            f"{name} never pointed at another digest before version {current.version}"
        )

    async def token_info(self) -> TokenInfo | None:
        """What the server says about our token (``GET /v1/token``): its ``write_prefixes``,
        ``admin`` and the rest; None from a server that cannot say."""
        try:
            _, body, _ = await self.retrying(
                lambda: self.request_json("GET", self.endpoint("/v1/token"))
            )
        except InvalidRequest as error:
            if error.status in (404, 405):
                return None
            raise
        return parsed(TokenInfo, body)

    async def _names_page(self, prefix: str, page: int, after: str | None) -> Any:
        params = {"prefix": prefix, "limit": str(page)} | ({"after": after} if after else {})
        _, body, _ = await self.request_json("GET", self.endpoint("/v1/names"), params=params)
        return body

    async def current(self, name: str) -> NameRecord | None:
        try:
            return await self.resolve(name)
        except NameNotFound:
            return None

    async def history(
        self, name: str, *, limit: int | None = None, before: int | None = None
    ) -> list[HistoryEntry]:
        """The changes of a name, newest first."""
        params = {"limit": str(limit)} if limit is not None else {}
        if before is not None:
            params["before"] = str(before)
        _, body, _ = await self.retrying(
            lambda: self.request_json(
                "GET", self.name_endpoint("/v1/history/", name), params=params
            )
        )
        return [parsed(HistoryEntry, entry) for entry in body["history"]]

    async def list_names(self, prefix: str = "", *, page: int = 100) -> AsyncIterator[NameRecord]:
        """Every name that starts with ``prefix``, in order, fetched a page at a time."""
        after: str | None = None
        while True:
            body = await self.retrying(functools.partial(self._names_page, prefix, page, after))
            for record in body["names"]:
                yield parsed(NameRecord, record)
            after = body.get("next")
            if not after:
                return
