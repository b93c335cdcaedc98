"""The S3 store: blobs as objects of an S3-compatible bucket (``CASD_BLOB_STORE=s3://B/P``).

Layout under the prefix (design study ``scale-out.md`` §5.1):

- ``blake3/<hex[0:2]>/<hex>``: verified blobs (the file store's relative paths), written only
  by a conditional create (``If-None-Match: *``) after the bytes were verified;
- ``staging/<process>/<serial>``: bodies whose digest was not known when they began (``POST``),
  published by a conditional server-side copy;
- ``uploads/<upload id>/<epoch>.<serial>``: the durable segments of resumable uploads;
- ``quarantine/<hex>.<random>``: quarantined bytes, kept for inspection.

A body whose digest is known streams into a multipart upload at the blob's own key, completed
(conditionally) at publication: no copy. Bodies of one part are one conditional PutObject.
"Exactly one creation" does not rest on the store: casd serialises the publishers of a digest
in PostgreSQL (SeaweedFS's conditional CompleteMultipartUpload is not atomic under races), and
the conditional writes only guard. A store that ignores them (``check()`` finds out) is guarded
by a HEAD under that lock instead. Nothing is journalled: an object completed by a publisher that
died before its row was committed is a verified object without a row, which the scrub adopts.

Objects of an upload that dies (a multipart upload never completed or aborted, a staging object
never removed) are found by :meth:`S3BlobStore.sweep_staging` by their age.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from casd.config import S3Location
from casd.digests import blob_relpath, hex_of
from casd.errors import Unavailable
from casd.stores.base import (
    Capabilities,
    Published,
    Segment,
    StagedBlob,
    UnfinishedPublication,
    is_segment_name,
)
from casd.stores.s3_client import (
    S3_FAILURES,
    is_missing,
    is_precondition_failed,
    open_client,
    s3_errors,
    translate,
)
from casd.stores.s3_upload import MIN_PART, PART_SIZE, ByteBudget, S3Upload
from casd.wire import DIGEST_ALGORITHM as ALGORITHM

if TYPE_CHECKING:  # the stubs are a development dependency
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
MAX_COPY = 5 * 1024**3  # CopyObject's limit; larger objects are copied in parts
COPY_PART = 512 * 1024**2
LIST_PAGE = 1000
DELETE_BATCH = 1000  # DeleteObjects' limit

# Staging keys: unique across processes and nodes without a random call per upload.
_PROCESS = f"{secrets.token_hex(6)}-{os.getpid()}"
_serial = itertools.count()


class S3StagedBlob:
    """A staged blob (:class:`casd.stores.StagedBlob`) over an :class:`S3Upload`.

    ``target``: the digest whose key the upload writes (known digest: completed there at
    publication), or None (unknown digest: a staging object, copied at publication)."""

    def __init__(self, upload: S3Upload, target: str | None) -> None:
        self.upload = upload
        self.target = target
        self.published = False

    @property
    def size(self) -> int:
        return self.upload.size

    @size.setter
    def size(self, value: int) -> None:
        self.upload.size = value

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        await self.upload.write(data)

    async def finish(self, tail: Sequence[bytes] = ()) -> None:
        await self.upload.finish(tail)


class S3BlobReader:
    """An open GET: the blob's size, and the bytes of the range asked for."""

    def __init__(
        self,
        body: Any,
        size: int,
        observe: Callable[[bytes], object] | None,
    ) -> None:
        self.size = size
        self._body = body
        self._observe = observe

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body is None:
            return
        chunks = self._chunks()
        if self._observe is None:
            async for chunk in chunks:
                yield chunk
            return
        # Hash in a thread one chunk behind: chunk n is hashed while it is sent and chunk n+1
        # read; it is yielded only once its hash is done (the caller holds the last one back).
        observe = self._observe
        previous: tuple[bytes, asyncio.Future[object]] | None = None
        async for chunk in chunks:
            if previous is not None:
                await previous[1]
            hashing = asyncio.ensure_future(asyncio.to_thread(observe, chunk))
            if previous is not None:
                yield previous[0]
            previous = (chunk, hashing)
        if previous is not None:
            await previous[1]
            yield previous[0]

    async def _chunks(self) -> AsyncIterator[bytes]:
        async for chunk in whole_chunks(self._body):
            yield chunk


async def whole_chunks(body: Any) -> AsyncIterator[bytes]:
    """A GET's body in chunks of READ_CHUNK (the last one shorter): the socket hands over
    pieces of 64 KiB or so, and each chunk costs a thread hand-off to hash and a write to the
    client, so they are joined first (one copy per MiB, far cheaper than the hand-offs)."""
    pieces: list[bytes] = []
    gathered = 0
    with s3_errors("reading a blob"):
        while piece := await body.read(READ_CHUNK - gathered):
            pieces.append(piece)
            gathered += len(piece)
            if gathered >= READ_CHUNK:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces, gathered = [], 0
    if pieces:
        yield b"".join(pieces)


class S3BlobStore:
    """Blobs in an S3 bucket under a key prefix; see the module's docstring."""

    def __init__(self, location: S3Location, buffer_bytes: int, part_size: int = PART_SIZE) -> None:
        self.location = location
        self.part_size = part_size  # of the first 1,000 parts of an upload (tests: smaller)
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.budget = ByteBudget(buffer_bytes)
        self.endpoint = ""
        # Until check() says otherwise, trust the conditional writes (the publish lock in
        # PostgreSQL makes them a guard only).
        self.conditional = True
        self._client: S3Client | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._opening = asyncio.Lock()
        self._live: set[str] = set()  # keys and upload ids this process is writing
        self._capabilities: Capabilities | None = None

    # --- the client ------------------------------------------------------------------------

    async def client(self) -> S3Client:
        """The process's S3 client, opened on first use (one per worker and event loop)."""
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    stack = contextlib.AsyncExitStack()
                    client, self.endpoint = await stack.enter_async_context(open_client())
                    self._exit_stack, self._client = stack, client
        return self._client

    async def close(self) -> None:
        if self._exit_stack is not None:
            stack, self._exit_stack, self._client = self._exit_stack, None, None
            await stack.aclose()

    def _key(self, relative: str) -> str:
        return self.prefix + relative

    def blob_key(self, digest: str) -> str:
        return self._key(str(blob_relpath(digest)))

    def _segment_key(self, upload_id: str, name: str) -> str:
        if not upload_id.isalnum():
            raise ValueError(f"not an upload id: {upload_id!r}")
        if not is_segment_name(name):
            raise ValueError(f"not a segment name: {name!r}")
        return self._key(f"uploads/{upload_id}/{name}")

    async def _upload(
        self, key: str, *, complete_at_finish: bool, hold_small: bool = True
    ) -> S3Upload:
        return S3Upload(
            await self.client(),
            self.bucket,
            key,
            self.budget,
            complete_at_finish=complete_at_finish,
            hold_small=hold_small,
            live=self._live,
            first_part=self.part_size,
        )

    # --- ingest ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def staging(self, expected: str | None = None) -> AsyncIterator[S3StagedBlob]:
        if expected is not None:
            upload = await self._upload(self.blob_key(expected), complete_at_finish=False)
        else:
            key = self._key(f"staging/{_PROCESS}/{next(_serial)}")
            upload = await self._upload(key, complete_at_finish=True)
        staged = S3StagedBlob(upload, expected)
        try:
            yield staged
        finally:
            await asyncio.shield(self._discard(staged))

    async def _discard(self, staged: S3StagedBlob) -> None:
        """A staged blob is done with: abort what was not completed; a staging object (of an
        unknown digest) goes too, published or not (its row is committed by now)."""
        upload = staged.upload
        await upload.close()
        if staged.target is None and upload.stored:
            with contextlib.suppress(*S3_FAILURES):
                await (await self.client()).delete_object(Bucket=self.bucket, Key=upload.key)

    async def publish(
        self, staged: StagedBlob, digest: str, *, replace_suspect: bool = False
    ) -> Published:
        assert isinstance(staged, S3StagedBlob) and staged.upload.finished
        key = self.blob_key(digest)
        conditional = not replace_suspect
        if conditional and not self.conditional and await self._exists(key):
            return Published.EXISTED  # the guard of a store without conditional writes
        upload = staged.upload
        if upload.key == key:
            small = upload.small
            if small is not None:
                created = await upload.put(small, conditional=conditional)
            else:
                created = await upload.complete(conditional=conditional)
        else:
            if staged.target is not None:
                raise ValueError(f"staged for {staged.target}, published as {digest}")
            created = await self._publish_copy(upload, key, conditional)
        staged.published = created
        return Published.CREATED if created else Published.EXISTED

    async def _publish_copy(self, upload: S3Upload, key: str, conditional: bool) -> bool:
        """A body whose digest was not known: one PutObject if it stayed in memory, else a
        server-side copy of its staging object."""
        small = upload.small
        if small is not None and not upload.stored:
            target = await self._upload(key, complete_at_finish=False)
            try:
                return await target.put(small, conditional=conditional)
            finally:
                await target.close()
        return await self._copy(upload.key, key, upload.size, conditional=conditional)

    async def settle(self, staged: StagedBlob) -> None:
        """Nothing is journalled: a staging object goes when the staged blob is done with."""

    @contextlib.asynccontextmanager
    async def assemble(
        self, upload_id: str, segments: Sequence[Segment], expected: str
    ) -> AsyncIterator[S3StagedBlob]:
        upload = await self._upload(self.blob_key(expected), complete_at_finish=False)
        staged = S3StagedBlob(upload, expected)
        try:
            await self._assemble(upload, upload_id, segments)
            yield staged
        finally:
            await asyncio.shield(self._discard(staged))

    async def _assemble(
        self, upload: S3Upload, upload_id: str, segments: Sequence[Segment]
    ) -> None:
        """Fill ``upload`` with the segments' bytes: a server-side copy of every run of at least
        5 MiB (S3's smallest part), the bytes themselves for what is shorter."""
        stored = {segment.name: segment.size for segment in await self.list_segments(upload_id)}
        for segment in segments:
            if stored.get(segment.name, -1) < segment.size:
                raise FileNotFoundError(f"segment {segment.name} of {upload_id} is gone or short")
        total = sum(segment.size for segment in segments)
        if total < MIN_PART:
            await upload.finish([chunk async for chunk in self.read_segments(upload_id, segments)])
            return
        pending: list[bytes] = []  # bytes read, not yet sent (less than MIN_PART)
        pending_size = 0
        for segment in segments:
            key = self._segment_key(upload_id, segment.name)
            start = 0
            if pending_size:  # fill the pending part up to MIN_PART from this segment
                need = min(MIN_PART - pending_size, segment.size)
                pending.append(await self._read_range(key, 0, need))
                pending_size += need
                start = need
                if pending_size >= MIN_PART:
                    await upload.write(pending)
                    await upload.flush_part()
                    pending, pending_size = [], 0
            rest = segment.size - start
            if rest >= MIN_PART:
                await self._copy_parts(upload, key, start, segment.size)
            elif rest:
                pending.append(await self._read_range(key, start, segment.size))
                pending_size += rest
        await upload.finish(pending)

    async def _copy_parts(self, upload: S3Upload, source: str, start: int, end: int) -> None:
        """Server-side copies of ``source``'s bytes ``start``..``end`` as parts of ``upload``
        (each at least MIN_PART, at most COPY_PART)."""
        upload_id = await upload.start_multipart()
        client = await self.client()
        count = max(1, (end - start) // COPY_PART + (1 if (end - start) % COPY_PART else 0))
        step = (end - start) // count
        bounds = [start + index * step for index in range(count)] + [end]
        for first, last in itertools.pairwise(bounds):
            number = upload.take_part_number()
            with s3_errors(f"copying {source} into {upload.key}"):
                answer = await client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=upload.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": source},
                    CopySourceRange=f"bytes={first}-{last - 1}",
                )
            await upload.add_part(number, {"ETag": answer["CopyPartResult"]["ETag"]}, last - first)

    async def _read_range(self, key: str, start: int, end: int) -> bytes:
        client = await self.client()
        with s3_errors(f"reading {key}"):
            answer = await client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            async with answer["Body"] as body:
                data = await body.read()
        if len(data) != end - start:
            raise FileNotFoundError(f"{key} holds fewer than {end} bytes")
        return data

    async def _copy(self, source: str, target: str, size: int, *, conditional: bool) -> bool:
        """A server-side copy; False if ``conditional`` and ``target`` exists."""
        client = await self.client()
        if size > MAX_COPY:
            upload = await self._upload(target, complete_at_finish=False)
            try:
                await self._copy_parts(upload, source, 0, size)
                upload.finished = True
                return await upload.complete(conditional=conditional)
            finally:
                await upload.close()
        copy: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": target,
            "CopySource": {"Bucket": self.bucket, "Key": source},
        }
        if conditional:
            copy["IfNoneMatch"] = "*"
        try:
            with s3_errors(f"copying {source} to {target}"):
                try:
                    await client.copy_object(**copy)
                except ClientError as error:
                    if conditional and is_precondition_failed(error):
                        raise FileExistsError(target) from error
                    raise
        except FileExistsError:
            return False
        return True

    # --- crash recovery of publications: nothing is journalled ----------------------------

    async def unfinished_publications(self) -> list[UnfinishedPublication]:
        return []

    async def is_published(self, publication: UnfinishedPublication) -> bool:
        return False

    async def release_publication(self, publication: UnfinishedPublication, done: bool) -> None:
        return None

    # --- reads -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(
        self,
        digest: str,
        start: int = 0,
        end: int | None = None,
        observe: Callable[[bytes], object] | None = None,
    ) -> AsyncIterator[S3BlobReader]:
        key = self.blob_key(digest)
        client = await self.client()
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            if end is not None and end <= start:
                size = await self.stat(digest)
                if size is None:
                    raise FileNotFoundError(key)
                yield S3BlobReader(None, size, observe)
                return
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with s3_errors(f"reading {key}"):
                answer = await client.get_object(**request)
        except Unavailable as error:
            if not _is_unsatisfiable_range(error):
                raise
            size = await self.stat(digest)  # the range starts at or past the end
            if size is None:
                raise FileNotFoundError(key) from error
            yield S3BlobReader(None, size, observe)
            return
        body = answer["Body"]
        try:
            yield S3BlobReader(body, _total_size(answer), observe)
        finally:
            body.close()

    async def stat(self, digest: str) -> int | None:
        return await self._size_of(self.blob_key(digest))

    async def _size_of(self, key: str) -> int | None:
        client = await self.client()
        try:
            with s3_errors(f"looking up {key}"):
                answer = await client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return None
        return answer["ContentLength"]

    async def _exists(self, key: str) -> bool:
        return await self._size_of(key) is not None

    # --- removal ---------------------------------------------------------------------------

    async def delete(self, digest: str) -> None:
        client = await self.client()
        with s3_errors(f"deleting {digest}"):
            await client.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))

    async def quarantine(self, digest: str) -> str | None:
        """Copy the bytes to ``quarantine/``, then delete them. Not atomic: a crash between
        the two leaves a copy in quarantine and the blob, and the caller (under the blob's
        exclusive lock) quarantines again."""
        key = self.blob_key(digest)
        size = await self._size_of(key)
        if size is None:
            return None
        target = self._key(f"quarantine/{hex_of(digest)}.{uuid.uuid4().hex[:8]}")
        try:
            await self._copy(key, target, size, conditional=False)
        except FileNotFoundError:
            return None
        client = await self.client()
        with s3_errors(f"deleting {digest}"):
            await client.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{self.bucket}/{target}"

    async def list_digests(self, after: str = "") -> AsyncIterator[list[str]]:
        base = self._key(f"{ALGORITHM}/")
        start_after = self.blob_key(after) if after else ""
        async for keys in self._list_keys(base, start_after):
            yield [f"{ALGORITHM}:{key.rpartition('/')[2]}" for key in keys]

    async def _list_keys(self, prefix: str, start_after: str = "") -> AsyncIterator[list[str]]:
        async for page in self._list_objects(prefix, start_after):
            yield [item["Key"] for item in page]

    async def _list_objects(
        self, prefix: str, start_after: str = ""
    ) -> AsyncIterator[list[dict[str, Any]]]:
        client = await self.client()
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE}
        if start_after:
            request["StartAfter"] = start_after
        while True:
            with s3_errors(f"listing {prefix}"):
                answer = await client.list_objects_v2(**request)
            items = [dict(item) for item in answer.get("Contents", [])]
            if items:
                yield items
            if not answer.get("IsTruncated") or not answer.get("NextContinuationToken"):
                return
            request["ContinuationToken"] = answer["NextContinuationToken"]

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        client = await self.client()
        for first in range(0, len(keys), DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[first : first + DELETE_BATCH]
            ]
            with s3_errors("deleting objects"):
                answer = await client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise Unavailable(f"the S3 store did not delete {failed[0].get('Key')}")

    # --- resumable uploads: segments -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def segment_writer(self, upload_id: str, name: str) -> AsyncIterator[S3StagedBlob]:
        key = self._segment_key(upload_id, name)
        if await self._exists(key):
            raise FileExistsError(key)
        upload = await self._upload(key, complete_at_finish=True, hold_small=False)
        staged = S3StagedBlob(upload, None)
        try:
            yield staged
        finally:
            await asyncio.shield(staged.upload.close())  # a finished segment stays

    async def read_segments(
        self, upload_id: str, segments: Sequence[Segment]
    ) -> AsyncIterator[bytes]:
        client = await self.client()
        for segment in segments:
            key = self._segment_key(upload_id, segment.name)
            if segment.size == 0:
                if not await self._exists(key):
                    raise FileNotFoundError(key)
                continue
            with s3_errors(f"reading {key}"):
                answer = await client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes=0-{segment.size - 1}"
                )
            if _total_size(answer) < segment.size:
                answer["Body"].close()
                raise FileNotFoundError(f"segment {segment.name} of {upload_id} is short")
            received = 0
            async with answer["Body"] as body:
                async for chunk in whole_chunks(body):
                    received += len(chunk)
                    yield chunk
            if received != segment.size:
                raise FileNotFoundError(f"segment {segment.name} of {upload_id} is short")

    async def delete_segments(self, upload_id: str, names: Sequence[str] | None = None) -> None:
        if names is None:
            keys = [
                key
                async for page in self._list_keys(self._key(f"uploads/{upload_id}/"))
                for key in page
            ]
        else:
            keys = [self._segment_key(upload_id, name) for name in names]
        await self._delete_keys(keys)

    async def list_upload_ids(self) -> AsyncIterator[list[str]]:
        # From the keys themselves, not from a delimited listing: some stores (SeaweedFS) list
        # a "folder" for a while after its last object went.
        base = self._key("uploads/")
        last = ""
        async for keys in self._list_keys(base):
            ids: list[str] = []
            for key in keys:
                upload_id = key.removeprefix(base).partition("/")[0]
                if upload_id != last:
                    ids.append(upload_id)
                    last = upload_id
            if ids:
                yield ids

    async def list_segments(self, upload_id: str) -> list[Segment]:
        base = self._key(f"uploads/{upload_id}/")
        found = [
            Segment(item["Key"].removeprefix(base), int(item["Size"]))
            async for page in self._list_objects(base)
            for item in page
            if is_segment_name(item["Key"].removeprefix(base))
        ]
        return sorted(found, key=lambda segment: tuple(map(int, segment.name.split("."))))

    # --- housekeeping ----------------------------------------------------------------------

    async def sweep_staging(self, older_than: float) -> int:
        """Abort multipart uploads and remove staging objects begun more than ``older_than``
        seconds ago by a writer that is gone; this process's own live ones are skipped, other
        nodes' by their age (so ``older_than`` must exceed the longest request)."""
        cutoff = time.time() - older_than
        removed = await self._abort_abandoned_uploads(cutoff)
        stale = [
            item["Key"]
            for prefix in (self._key("staging/"), self._key("casd-check/"))
            async for page in self._list_objects(prefix)
            for item in page
            if item["LastModified"].timestamp() <= cutoff and item["Key"] not in self._live
        ]
        await self._delete_keys(stale)
        removed += len(stale)
        if removed:
            log.info("removed %d abandoned uploads and staging objects", removed)
        return removed

    async def _abort_abandoned_uploads(self, cutoff: float) -> int:
        client = await self.client()
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        aborted = 0
        while True:
            with s3_errors("listing multipart uploads"):
                answer = await client.list_multipart_uploads(**request)
            for upload in answer.get("Uploads", []):
                if upload["UploadId"] in self._live or upload["Initiated"].timestamp() > cutoff:
                    continue
                with contextlib.suppress(FileNotFoundError), s3_errors("aborting an upload"):
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                aborted += 1
            if not answer.get("IsTruncated"):
                return aborted
            request["KeyMarker"] = answer.get("NextKeyMarker", "")
            request["UploadIdMarker"] = answer.get("NextUploadIdMarker", "")

    async def check(self) -> Capabilities:
        """Reachable, the bucket there, writable, and whether conditional creates are honoured
        (else publication is guarded by a HEAD under casd's publish lock). Raises
        :class:`Unavailable` with a one-line reason otherwise."""
        client = await self.client()
        where = f"s3://{self.bucket} at {self.endpoint}"
        try:
            await client.head_bucket(Bucket=self.bucket)
        except S3_FAILURES as error:
            raise _check_failure(error, where, "cannot reach the bucket") from error
        if self._capabilities is not None:
            return self._capabilities  # probed once per process; readiness asks often
        probe = self._key(f"casd-check/{uuid.uuid4().hex}")
        try:
            await client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
        except S3_FAILURES as error:
            raise _check_failure(error, where, "cannot write to the bucket") from error
        try:
            await client.put_object(Bucket=self.bucket, Key=probe, Body=b"", IfNoneMatch="*")
            self.conditional = False
        except ClientError as error:
            if not is_precondition_failed(error):
                raise _check_failure(error, where, "cannot write to the bucket") from error
            self.conditional = True
        except S3_FAILURES as error:
            raise _check_failure(error, where, "cannot write to the bucket") from error
        finally:
            with contextlib.suppress(*S3_FAILURES):
                await client.delete_object(Bucket=self.bucket, Key=probe)
        guard = (
            "conditional writes honoured"
            if self.conditional
            else "conditional writes NOT honoured: a HEAD under the publish lock guards them"
        )
        self._capabilities = Capabilities(
            "s3", True, self.conditional, f"{self.location.url}: {guard}"
        )
        return self._capabilities


def _total_size(answer: Any) -> int:
    """The whole object's size from a GET's answer (ranged or not)."""
    content_range = answer.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rpartition("/")[2]
        if total.isdigit():
            return int(total)
    return int(answer["ContentLength"])


def _is_unsatisfiable_range(error: Unavailable) -> bool:
    cause = error.__cause__
    return isinstance(cause, ClientError) and (
        cause.response.get("Error", {}).get("Code") == "InvalidRange"
        or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416
    )


def _check_failure(error: BaseException, where: str, what: str) -> Unavailable:
    """The one-line reason the store cannot be used."""
    if isinstance(error, ClientError) and is_missing(error):
        return Unavailable(f"{where}: the bucket does not exist")
    translated = translate(error, what)
    detail = getattr(translated, "detail", str(translated))
    return Unavailable(f"{where}: {what}: {detail}")
