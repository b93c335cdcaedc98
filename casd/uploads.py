"""Resumable uploads: bytes staged in the blob store over many requests, state in PostgreSQL.

Each request writes its body, hashing it (:mod:`casd.ingest`), into segments of the blob store
named after its lease epoch: ``<epoch>.<n>``. Whenever it pauses, is interrupted, or every few
seconds, it finishes the current segment (the bytes are durable) and records the new offset
together with the segments in the upload's row, in one statement guarded by its epoch: the
bytes of a writer that was superseded are never recorded, and any process of any node continues
the upload from the row (scale-out.md §5.4). A complete upload's segments are assembled into
one staged blob, verified and published through the same path as ``PUT /v1/blobs``
(:meth:`BlobService.publish`); the segments go after the commit, and the sweep removes those
that no row records. The hasher stays in memory in the process that wrote last, keyed by the
offset it covers; another process hashes the recorded segments again, once. Who may write is
decided in :mod:`casd.upload_leases`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import blake3

from casd import crashpoints, wire
from casd.auth import Token
from casd.blobs import Blob, BlobService, Charge
from casd.database import Database, Queries
from casd.digests import format_digest, new_hasher
from casd.errors import (
    BodyStalled,
    CasdError,
    DigestMismatch,
    IncompleteBody,
    InvalidRequest,
    MismatchingUploadOffset,
    PayloadTooLarge,
    QuotaExceeded,
    RequestTimeout,
    Unavailable,
    UploadNotFound,
)
from casd.ingest import INGEST_BUFFER, HashingWriter
from casd.stores import BlobStore, Segment, StagedBlob, segment_name
from casd.upload_leases import Lease, StopReason, UploadCompleted, UploadLeases, UploadRow

log = logging.getLogger(__name__)

# A writer makes its bytes durable and records the offset at least this often while bytes
# arrive, so that a crash of the server costs a client at most this much of its upload.
CHECKPOINT_SECONDS = 5.0
# In-memory hashers kept for uploads that wait for their next request.
HASHER_CACHE_SIZE = 256
# GET /v1/uploads lists at most this many uploads of a token.
MAX_LISTED = 1000
# Bad input: the request is refused and the upload stays as it was.
_INVALID = (InvalidRequest, PayloadTooLarge)


class WriterStopped(TimeoutError):
    """Ends the body of a request whose upload was taken over (raised by the body reader).

    A TimeoutError, because the request's time is up: aiohttp then drops the rest of that
    body quietly after the answer and closes the connection, as for a lingering timeout.
    """

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class BodyBrokeOff(Exception):
    """The request's body ended before its end (a lost connection, a malformed body)."""


@dataclass(frozen=True)
class UploadStatus:
    id: str
    offset: int
    length: int | None
    completed: Blob | None = None  # the blob of a completed upload


@dataclass(frozen=True)
class UploadSummary:
    """One upload as its owner lists it (``GET /v1/uploads``)."""

    id: str
    offset: int  # durable bytes; a request writing now may hold a few seconds more
    length: int | None
    digest: str | None  # the digest it was created with (Casd-Digest)
    created_at: str
    age: float  # seconds since it was created
    idle: float  # seconds since its last request; it expires after the upload TTL

    def as_dict(self) -> dict[str, Any]:
        return wire.UploadSummary.of(self).to_json()


@dataclass(frozen=True)
class RequestBody:
    """The body of one request, as the HTTP layer hands it over."""

    chunks: AsyncIterable[bytes]
    size: int | None  # Content-Length; None when unknown (chunked)
    interrupt: Callable[[BaseException], None]  # makes the next read of ``chunks`` raise
    accept: Callable[[], Awaitable[None]]  # tells a waiting client to send (100 Continue)


@dataclass(frozen=True)
class Append:
    """What a request asks for: its body appended at ``offset``, the upload maybe complete."""

    offset: int = 0
    complete: bool = False
    length: int | None = None  # Upload-Length
    digest: str | None = None  # Casd-Digest
    charge: Charge | None = None  # the token's budget, which the upload's new bytes draw on

    def check_budget(self, size: int | None) -> None:
        if self.charge is not None:
            self.charge.check(size)


class UploadService:
    def __init__(self, db: Database, store: BlobStore, blobs: BlobService, upload_ttl: float):
        self.db = db
        self.store = store
        self.blobs = blobs
        self.upload_ttl = upload_ttl
        self.leases = UploadLeases(db)
        self._hashers: collections.OrderedDict[str, tuple[int, blake3.blake3]] = (
            collections.OrderedDict()
        )
        self._tasks: set[asyncio.Task[UploadStatus | Blob]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.leases.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def shutdown(self) -> None:
        """End every request that writes now; each records the bytes it received."""
        self.leases.stop_all(StopReason.SHUTDOWN)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.leases.close()

    async def create(self, token: Token, request: Append, body: RequestBody) -> UploadStatus | Blob:
        """A new upload, with the first bytes (or all of them) from the request's body."""
        row = UploadRow(0, request.length, request.digest)
        self._validate(row, request, body.size)
        lease = await self.leases.create(uuid.uuid4().hex, token.id, row)
        return await self._run(lease, request, body, fresh=True)

    async def status(self, upload_id: str, token: Token) -> UploadStatus:
        """The durable offset, once a request still writing to the upload has ended."""
        try:
            row = await self.leases.observe(upload_id, token.id)
        except UploadCompleted as done:
            return UploadStatus(upload_id, done.size, done.size, Blob(done.digest, done.size))
        return UploadStatus(upload_id, row.offset, row.length)

    async def listing(self, token: Token, limit: int = MAX_LISTED) -> list[UploadSummary]:
        """The uploads of ``token``, oldest first (at most ``limit``)."""
        rows = await self.db.fetch("list_uploads", token.id, limit)
        return [
            UploadSummary(
                row["id"],
                row["upload_offset"],
                row["upload_length"],
                row["expected_digest"],
                row["created_at"].isoformat(),
                round(row["age"], 3),
                round(row["idle"], 3),
            )
            for row in rows
        ]

    async def append(
        self, upload_id: str, token: Token, request: Append, body: RequestBody
    ) -> UploadStatus | Blob:
        """Append the body at ``request.offset``; publish the blob if the upload is complete.
        An upload completed earlier changes no more: its status (with the blob) is returned."""
        try:
            lease = await self.leases.acquire(upload_id, token.id)
        except UploadCompleted as done:
            if request.digest is not None and request.digest != done.digest:
                raise DigestMismatch(
                    f"the upload is complete as {done.digest}, not {request.digest}"
                ) from None
            return UploadStatus(upload_id, done.size, done.size, Blob(done.digest, done.size))
        try:
            length = self._validate(lease.row, request, body.size)
            if length != lease.row.length and length is not None:
                await self.leases.set_length(lease, length)
                lease.row = replace(lease.row, length=length)
        except QuotaExceeded:
            await self._discard(lease)  # an upload over budget leaves nothing behind
            raise
        except BaseException:
            await self._release_unchanged(lease)
            raise
        return await self._run(lease, request, body, fresh=False)

    async def delete(self, upload_id: str, token: Token) -> None:
        try:
            lease = await self.leases.acquire(upload_id, token.id)
        except UploadCompleted:
            await self.db.execute("delete_completed_upload", upload_id, token.id)
            return
        await self._discard(lease)

    def _validate(self, row: UploadRow, request: Append, size: int | None) -> int | None:
        """Refuse a request that cannot succeed before reading its body; the upload's length."""
        if request.offset != row.offset:
            raise MismatchingUploadOffset(
                f"the upload is at byte {row.offset}, not {request.offset}", offset=row.offset
            )
        length = row.length if request.length is None else request.length
        if row.length is not None and length != row.length:
            raise InvalidRequest(f"Upload-Length {length} differs from the upload's {row.length}")
        if length is not None and length < row.offset:
            raise InvalidRequest(
                f"Upload-Length {length} is less than the {row.offset} bytes staged"
            )
        if request.digest and row.expected_digest and request.digest != row.expected_digest:
            raise InvalidRequest("Casd-Digest differs from the one the upload was created with")
        self.blobs.check_announced_size(length)
        request.check_budget(length)
        if size is not None:
            end = row.offset + size
            self._check_end(length, end)
            request.check_budget(end)
            if request.complete and length is not None and end != length:
                raise InvalidRequest(f"the upload would end at byte {end}, not at {length}")
        return length

    def _check_end(self, length: int | None, end: int) -> None:
        if length is not None and end > length:
            raise InvalidRequest(f"the body goes past Upload-Length ({length} bytes)")
        self.blobs.check_announced_size(end)

    async def _run(
        self, lease: Lease, request: Append, body: RequestBody, *, fresh: bool
    ) -> UploadStatus | Blob:
        # The writing runs to its end even if the handler is cancelled: bytes received are kept.
        task = asyncio.ensure_future(self._receive(lease, request, body, fresh=fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            body.interrupt(ConnectionResetError("the request was cancelled"))
            raise

    async def _receive(
        self, lease: Lease, request: Append, body: RequestBody, *, fresh: bool
    ) -> UploadStatus | Blob:
        try:
            return await self._receive_leased(lease, request, body, fresh=fresh)
        except BaseException:
            if fresh:  # the client never learnt where the upload is: nobody can resume it
                await self._forget(lease.upload_id)
            raise

    async def _forget(self, upload_id: str) -> None:
        """Remove an upload whose creating request failed (its id was never sent)."""
        self._hashers.pop(upload_id, None)
        try:
            await self.db.execute("forget_upload", upload_id)
            await self.store.delete_segments(upload_id)
        except CasdError as error:
            log.warning("upload %s: cannot remove it (%s); it expires", upload_id, error.detail)

    async def _receive_leased(
        self, lease: Lease, request: Append, body: RequestBody, *, fresh: bool
    ) -> UploadStatus | Blob:
        lease.on_stop(lambda reason: body.interrupt(WriterStopped(reason)))
        sink = _Sink(self.store, lease)
        try:
            return await self._write(lease, request, body, sink, fresh)
        finally:
            await sink.close()
            if self.leases.holds(lease):  # a failure on the way out: let go at a safe offset
                log.warning(
                    "upload %s: letting go at byte %d after a failure",
                    lease.upload_id,
                    sink.recorded,
                )
                await self.leases.release(lease, sink.recorded, sink.segments)

    async def _write(
        self, lease: Lease, request: Append, body: RequestBody, sink: _Sink, fresh: bool
    ) -> UploadStatus | Blob:
        try:
            sink.resume(await self._hasher_for(lease, sink))
            await _accept(body)
            await self._pump(lease, request, body, sink)
        except _INVALID as error:
            with contextlib.suppress(Exception):
                await sink.close()  # no write may land once another request may write
            discard = fresh or isinstance(error, QuotaExceeded)  # over budget: nothing stays
            await (self._discard(lease) if discard else self._release_unchanged(lease, sink))
            raise
        except BaseException as error:
            replacement = await self._keep_received(lease, sink, error)
            if replacement is error:
                raise
            raise replacement from error
        if request.complete:
            return await self._complete(lease, request, sink)
        return await self._pause(lease, sink)

    async def _hasher_for(self, lease: Lease, sink: _Sink) -> blake3.blake3:
        """The in-memory hasher of the staged bytes, or a new one over the recorded segments
        (read once: a takeover, on this node or another)."""
        offset = lease.row.offset
        cached = self._hashers.pop(lease.upload_id, None)
        if cached is not None and cached[0] == offset:
            return cached[1]
        hasher = new_hasher()
        if offset:
            log.info("upload %s: hashing its %d staged bytes again", lease.upload_id, offset)
            try:
                async for chunk in self.store.read_segments(lease.upload_id, sink.segments):
                    if lease.reason is not None:
                        raise WriterStopped(lease.reason)
                    await asyncio.to_thread(hasher.update, chunk)
            except FileNotFoundError as error:
                await self._discard(lease)
                raise UploadNotFound("the staged bytes of this upload are lost") from error
        return hasher

    async def _pump(self, lease: Lease, request: Append, body: RequestBody, sink: _Sink) -> None:
        """Absorb the body in buffers, recording durable progress every few seconds; on an
        interruption the bytes that arrived are absorbed before the error goes on."""
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + CHECKPOINT_SECONDS
        parts: list[bytes] = []
        gathered = 0
        try:
            async for chunk in _received(body.chunks):
                self._check_end(lease.row.length, sink.end + gathered + len(chunk))
                request.check_budget(sink.end + gathered + len(chunk))
                parts.append(chunk)
                gathered += len(chunk)
                if gathered < INGEST_BUFFER:
                    continue
                await sink.absorb(parts)
                parts, gathered = [], 0
                if loop.time() >= next_checkpoint:
                    await self._checkpoint(lease, sink)
                    next_checkpoint = loop.time() + CHECKPOINT_SECONDS
        except _INVALID:
            raise
        except BaseException:
            if parts:
                await sink.absorb(parts)
            raise
        if parts:
            await sink.absorb(parts)

    async def _checkpoint(self, lease: Lease, sink: _Sink) -> None:
        offset, segments = await sink.sync()
        if await self.leases.checkpoint(lease, offset, segments):
            sink.recorded_now(offset, segments)

    async def _keep_received(
        self, lease: Lease, sink: _Sink, error: BaseException
    ) -> BaseException:
        """Record the bytes that arrived before ``error`` ended the request; what to raise."""
        try:
            offset, segments = await sink.sync()
        except Exception:
            log.exception("upload %s: cannot make its last bytes durable", lease.upload_id)
            offset, segments, sink.hashed = sink.recorded, sink.segments, -1
        kept = await self._release(lease, offset, segments, sink)
        reason = error.reason if isinstance(error, WriterStopped) else None
        if reason is StopReason.GONE or (reason is not None and not kept):
            return UploadNotFound(f"upload {lease.upload_id} was removed")
        if reason is StopReason.SUPERSEDED:
            return MismatchingUploadOffset(
                f"{reason.value}; the upload continues at byte {offset}", offset=offset
            )
        if reason is not None:
            return Unavailable(f"{reason.value}; resume at byte {offset}", offset=offset)
        if isinstance(error, BodyStalled):
            return RequestTimeout(f"{error}; {offset} bytes are staged", offset=offset)
        if isinstance(error, BodyBrokeOff):
            # The client is gone or its body is malformed: answer anyway, nobody may listen.
            return IncompleteBody(f"{error}; {offset} bytes are staged", offset=offset)
        return error

    async def _pause(self, lease: Lease, sink: _Sink) -> UploadStatus:
        offset, segments = await sink.sync()
        if not await self._release(lease, offset, segments, sink):
            raise UploadNotFound(f"upload {lease.upload_id} was removed while being written")
        return UploadStatus(lease.upload_id, offset, lease.row.length)

    async def _complete(self, lease: Lease, request: Append, sink: _Sink) -> Blob:
        size, segments = await sink.sync()
        if lease.row.length is not None and size != lease.row.length:
            await self._release_unchanged(lease, sink)
            raise InvalidRequest(
                f"the upload has {size} bytes, Upload-Length says {lease.row.length}"
            )
        digest = format_digest(sink.hasher)
        expected = request.digest or lease.row.expected_digest
        if expected is not None and digest != expected:
            await self._discard(lease)
            raise DigestMismatch(f"the upload hashes to {digest}, not {expected}; it was discarded")
        # Every byte is recorded first: whatever a crash interrupts below, the upload can be
        # resumed from its end (and finished with an empty PATCH).
        if not await self.leases.checkpoint(lease, size, segments):
            # Lost (removed, or taken over as if this process were dead): what the row
            # records is no longer this request's to publish.
            raise UploadNotFound(f"upload {lease.upload_id} was removed while being written")
        sink.recorded_now(size, segments)
        blob = await self._publish(lease, request, sink, digest, size)
        crashpoints.reached("upload-before-segments-deleted")
        await self._delete_segments(lease.upload_id)  # the sweep does it if this fails
        return blob

    async def _publish(
        self, lease: Lease, request: Append, sink: _Sink, digest: str, size: int
    ) -> Blob:
        """Assemble the recorded segments and publish them; the upload is complete with the
        blob's row (one transaction)."""

        async def record_completion(tx: Queries) -> None:
            if not await self.leases.complete(tx, lease, digest, size):
                # Taken over or removed since the checkpoint: another request owns the row.
                raise UploadNotFound(f"upload {lease.upload_id} was removed while being written")

        try:
            async with self.store.assemble(lease.upload_id, sink.segments, digest) as staged:
                if staged.size != size:  # never publish other bytes than those hashed
                    raise Unavailable(
                        f"the segments of upload {lease.upload_id} hold {staged.size}"
                        f" bytes, not {size}"
                    )
                crashpoints.reached("upload-before-publish")
                await self.blobs.publish(staged, digest, request.charge, also=record_completion)
        except FileNotFoundError as error:
            await self._discard(lease)
            raise UploadNotFound("the staged bytes of this upload are lost") from error
        except QuotaExceeded:
            await self._discard(lease)
            raise
        except BaseException:
            await self._release(lease, size, sink.segments, sink)
            raise
        self._hashers.pop(lease.upload_id, None)
        self.leases.finished(lease)
        log.info("upload %s complete: %s (%d bytes)", lease.upload_id, digest, size)
        return Blob(digest, size)

    async def _delete_segments(self, upload_id: str, names: list[str] | None = None) -> None:
        try:
            await self.store.delete_segments(upload_id, names)
        except CasdError as error:
            log.warning("upload %s: cannot remove segments (%s)", upload_id, error.detail)

    async def _release(
        self, lease: Lease, offset: int, segments: list[Segment], sink: _Sink | None = None
    ) -> bool:
        """Let go of the upload at ``offset`` (held by ``segments``); keep the hasher if it
        covers exactly that."""
        kept = await self.leases.release(lease, offset, segments)
        if kept and sink is not None:
            sink.recorded_now(offset, segments)
            if sink.covers(offset):
                self._hashers[lease.upload_id] = (offset, sink.hasher)
                while len(self._hashers) > HASHER_CACHE_SIZE:
                    self._hashers.popitem(last=False)
        return kept

    async def _release_unchanged(self, lease: Lease, sink: _Sink | None = None) -> bool:
        """Let go of the upload as this request found it: a refused request changes nothing,
        and the segments it wrote go (the sweep removes them if this fails)."""
        kept = await self._release(lease, lease.row.offset, list(lease.row.segments))
        if kept and sink is not None and sink.written:
            await self._delete_segments(lease.upload_id, sink.written)
        return kept

    async def _discard(self, lease: Lease) -> None:
        self._hashers.pop(lease.upload_id, None)
        await self.leases.remove(lease)
        await self._delete_segments(lease.upload_id)

    async def _sweep_forever(self) -> None:
        interval = min(max(self.upload_ttl / 4, 0.5), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire()
                await self.blobs.recover_publications()
            except CasdError as error:
                log.warning("upload sweep failed: %s", error.detail)
            except Exception:
                log.exception("upload sweep failed")

    async def recover_after_crash(self) -> None:
        """Finish what a crash of a casd process interrupted (at the start of ``casd serve``
        and of every worker): blob files published without their row are adopted, and the
        staged bytes of uploads that completed (or are gone) removed."""
        adopted = await self.blobs.recover_publications()
        if adopted:
            log.info("adopted %d blobs whose publication a crash interrupted", adopted)
        await self.expire()

    async def expire(self) -> int:
        """Remove uploads idle for longer than the TTL, and segments that no upload records."""
        rows = await self.db.fetch("expire_uploads", self.upload_ttl)
        for row in rows:
            self._hashers.pop(row["id"], None)
            await self._delete_segments(row["id"])
        if rows:
            log.info("removed %d idle uploads", len(rows))
        await self._remove_orphans()
        return len(rows)

    async def _remove_orphans(self) -> None:
        """Segments of uploads without a row, or no longer needed (complete); segments that
        their upload does not record and whose writer can no longer record them (another
        writer, or none, holds the upload: the guarded checkpoint refuses a stale one; those of
        a writer whose process died go once the next request takes the upload over). Listed
        before the rows are read: a segment recorded meanwhile is in the row."""
        async for page in self.store.list_upload_ids():
            listed = {upload_id: await self.store.list_segments(upload_id) for upload_id in page}
            rows = {row["id"]: row for row in await self.db.fetch("uploads_needing_segments", page)}
            for upload_id, stored in listed.items():
                row = rows.get(upload_id)
                if row is None:
                    await self._delete_segments(upload_id)
                    continue
                recorded = {name for name, _ in row["segments"]}
                writer = row["writer_epoch"]
                stale = [
                    segment.name
                    for segment in stored
                    if segment.name not in recorded and segment.epoch != writer
                ]
                if stale:
                    log.info("upload %s: removing unrecorded segments %s", upload_id, stale)
                    await self._delete_segments(upload_id, stale)


async def _accept(body: RequestBody) -> None:
    try:
        await body.accept()
    except OSError as error:
        raise BodyBrokeOff("the client went away before sending its body") from error


async def _received(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The body's chunks; a failure of the body itself becomes :class:`BodyBrokeOff`."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except (WriterStopped, BodyStalled):
            raise
        except Exception as error:
            raise BodyBrokeOff(f"the body broke off ({type(error).__name__})") from error
        yield chunk


class _Sink:
    """The ingest pipeline over this request's segments, and what the upload's row records.

    Bytes go to the open segment ``<epoch>.<n>`` through a :class:`HashingWriter`; :meth:`sync`
    finishes it (durable) and hands it over to be recorded; the next bytes open the next one.
    """

    def __init__(self, store: BlobStore, lease: Lease) -> None:
        self.store = store
        self.upload_id = lease.upload_id
        self.epoch = lease.epoch
        self.recorded = lease.row.offset  # bytes known durable and recorded
        self.segments = list(lease.row.segments)  # the recorded ones, in order
        self._pending: list[Segment] = []  # finished, not recorded yet
        self.written: list[str] = []  # the names of every segment this request opened
        self.hasher = new_hasher()  # of every byte handed over, once it is given (resume)
        self.hashed = -1  # bytes the hasher covers (-1: none given yet, or it no longer matches)
        self._end = lease.row.offset  # bytes in finished segments
        self._serial = 0
        self._segment: contextlib.AbstractAsyncContextManager[StagedBlob] | None = None
        self._writer: HashingWriter | None = None  # over the open segment

    def resume(self, hasher: blake3.blake3) -> None:
        """Go on from ``hasher``, which covers the recorded bytes."""
        self.hasher, self.hashed = hasher, self._end

    @property
    def end(self) -> int:
        """Bytes handed over, including the buffer in flight."""
        return self._end if self._writer is None else self._writer.end

    async def absorb(self, parts: list[bytes]) -> None:
        if self._writer is None:
            name = segment_name(self.epoch, self._serial)
            segment = self.store.segment_writer(self.upload_id, name)
            staged = await segment.__aenter__()
            self.written.append(name)
            self._segment, self._writer = segment, HashingWriter(staged, self.hasher, self._end)
        await self._writer.absorb(parts)

    async def settle(self) -> None:
        """Wait for the buffer in flight."""
        if self._writer is not None:
            await self._writer.settle()

    async def sync(self) -> tuple[int, list[Segment]]:
        """Finish the open segment (its bytes durable); the offset then, and the segments to
        record for it (the recorded ones and this one)."""
        writer = self._writer
        if writer is None:
            return self._end, [*self.segments, *self._pending]
        name = segment_name(self.epoch, self._serial)
        try:
            await writer.settle()
            await writer.staged.finish()
            crashpoints.reached("segment-before-record")
        finally:
            self._serial += 1
            self.hashed = writer.hashed if self.hashed >= 0 else -1
            await self._close_segment()
        self._end = writer.end
        if writer.staged.size:
            self._pending.append(Segment(name, writer.staged.size))
        return self._end, [*self.segments, *self._pending]

    def recorded_now(self, offset: int, segments: list[Segment]) -> None:
        """The row records ``segments`` (all of them, in order) up to ``offset`` now."""
        self.recorded, self.segments, self._pending = offset, list(segments), []

    def covers(self, offset: int) -> bool:
        return self._writer is None and self.hashed == offset == self._end

    async def close(self) -> None:
        """On the way out: no write may land once another request may write."""
        if self._writer is not None:
            await self._writer.close()
            self.hashed = -1
            await self._close_segment()

    async def _close_segment(self) -> None:
        segment, self._segment, self._writer = self._segment, None, None
        if segment is not None:
            await segment.__aexit__(None, None, None)
