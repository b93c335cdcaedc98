"""The blob service: content addressing on top of a :class:`BlobStore` and the ``blobs`` table.

Ingest streams bytes to a staging object while hashing them, verifies, makes them durable and
publishes them under their digest; the database row is written in the same step, under the
blob's advisory lock so that garbage collection and publication never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from casd import crashpoints, metrics
from casd.database import Database, Queries
from casd.digests import format_digest, lock_key, new_hasher, publish_lock_key
from casd.errors import (
    BlobNotFound,
    BlobQuarantined,
    DigestMismatch,
    IncompleteBody,
    PayloadTooLarge,
    QuotaExceeded,
)
from casd.ingest import HashingWriter, gather_parts
from casd.stores import BlobReader, BlobStore, Published, StagedBlob

log = logging.getLogger(__name__)

# Row statuses whose stored bytes a verified upload replaces (the heal).
SUSPECT = frozenset({"quarantined", "missing"})


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    status: str
    created_at: datetime
    last_used_at: datetime

    @property
    def healthy(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Charge:
    """Who pays for the new bytes of an upload: a token's budget.

    ``remaining`` is what the token may still store as the upload began (None: not checked while
    the bytes arrive); it refuses an upload as soon as the bytes received pass it. The budget
    itself is charged when the blob is published, under the token's row lock when it has a
    quota, so concurrent uploads of one token never take it past its quota together.
    """

    token_id: int
    limited: bool = False
    remaining: int | None = None

    def check(self, size: int | None) -> None:
        if size is not None and self.remaining is not None and size > self.remaining:
            raise QuotaExceeded(
                f"the token may store {self.remaining} more bytes; this upload has more"
                " (nothing was stored)"
            )

    def unchecked_while_streaming(self) -> Charge:
        return replace(self, remaining=None)


class BlobService:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        max_blob_size: int | None = None,
        *,
        verify_reads: bool = True,
    ) -> None:
        self.db = db
        self.store = store
        self.max_blob_size = max_blob_size
        self.verify_reads = verify_reads  # CASD_VERIFY_READS: whole reads are hashed as they go

    def check_announced_size(self, size: int | None) -> None:
        if size is not None and self.max_blob_size is not None and size > self.max_blob_size:
            raise PayloadTooLarge(f"blobs larger than {self.max_blob_size} bytes are refused")

    async def ingest(
        self,
        chunks: AsyncIterable[bytes],
        expected_digest: str | None = None,
        expected_size: int | None = None,
        charge: Charge | None = None,
    ) -> tuple[Blob, bool]:
        """Store a stream of bytes; return the blob and whether it is new (and so charged)."""
        self.check_announced_size(expected_size)
        if charge is not None:
            charge.check(expected_size)
        async with self.store.staging(expected_digest) as staged:
            writer = HashingWriter(staged, new_hasher())
            try:
                last = await self._absorb_stream(chunks, writer, charge)
            finally:
                await writer.close()
            size = writer.end
            if expected_size is not None and size != expected_size:
                raise IncompleteBody(
                    f"received {size} of {expected_size} announced bytes; nothing stored"
                )
            digest = format_digest(writer.hasher)
            if expected_digest is not None and digest != expected_digest:
                raise DigestMismatch(f"the body hashes to {digest}, not {expected_digest}")
            await staged.finish(last)
            created = await self.publish(staged, digest, charge)
            return Blob(digest, staged.size), created

    async def _absorb_stream(
        self, chunks: AsyncIterable[bytes], writer: HashingWriter, charge: Charge | None
    ) -> list[bytes]:
        """Receive the next buffer while the previous one is hashed and written. The last one
        is only hashed: it is returned to be written along with the fsync."""
        held: list[bytes] = []
        received = 0
        async for parts, size in gather_parts(chunks):
            received += size
            self.check_announced_size(received)
            if charge is not None:
                charge.check(received)
            if held:
                await writer.absorb(held)
            held = parts
        await writer.hash_tail(held)
        return held

    async def publish(
        self,
        staged: StagedBlob,
        digest: str,
        charge: Charge | None = None,
        also: Callable[[Queries], Awaitable[None]] | None = None,
    ) -> bool:
        """Move verified, durable bytes under their digest and record them; True if new. New
        bytes are charged to ``charge``; bytes stored already cost nothing. ``also(tx)``
        records more in the same transaction (a resumable upload's completion).

        Crash-atomic: the store keeps a record of the publication until the row is committed,
        and :meth:`recover_publications` (at the start of ``casd serve`` and of every worker)
        adopts a file that a crash left without its row.
        """
        async with self.db.transaction() as tx:
            # The row first (under the shared lock and the publish lock, one round trip): it
            # commits only once the bytes are in place, so nobody sees it before, and a failed
            # publish rolls it back.
            row = await tx.fetchrow(
                "lock_and_upsert_blob",
                digest,
                staged.size,
                lock_key(digest),
                *publish_lock_key(digest),
            )
            assert row is not None  # an upsert returns its row
            created: bool = row["created"]
            if created and charge is not None and charge.limited:
                used = await tx.fetchval("charge_token_within_quota", charge.token_id, staged.size)
                if used is None:
                    raise QuotaExceeded(
                        f"storing these {staged.size} bytes would take the token past its quota;"
                        " nothing was stored"
                    )
            if also is not None:  # before the bytes: if it refuses, nothing is published
                await also(tx)
            await self._publish_bytes(tx, staged, digest, created, row["status"])
            crashpoints.reached("publish-before-commit")
        crashpoints.reached("publish-before-settle")
        await asyncio.shield(self._settle(staged))
        if created and charge is not None and not charge.limited:
            # No quota to hold: counted after the commit, without holding the token's row.
            await self.db.execute("charge_token", charge.token_id, staged.size)
        metrics.BYTES_RECEIVED.inc(staged.size)
        if created:
            metrics.BLOBS_CREATED.inc()
        return created

    async def _publish_bytes(
        self, tx: Queries, staged: StagedBlob, digest: str, created: bool, status: str
    ) -> None:
        """Put the verified bytes under their digest and make the row say what happened.

        Bytes at the key are replaced only when nothing vouches for them: no row before this
        one (what a crash or a stranger left; no publisher races us, the publish lock holds
        them off), or a row that says they are quarantined or missing. Bytes that were there
        already keep the row's verified_at: this upload did not check them.
        """
        replace_suspect = created or status in SUSPECT
        published = await self.store.publish(staged, digest, replace_suspect=replace_suspect)
        if published is Published.CREATED and not created:
            await tx.execute("heal_blob", digest)
        elif published is Published.EXISTED and created:
            await tx.execute("unverify_blob", digest)

    async def _settle(self, staged: StagedBlob) -> None:
        try:
            await self.store.settle(staged)
        except Exception:  # recovery or the next start settles it
            log.exception("cannot remove the record of a finished publication")

    async def recover_publications(self) -> int:
        """Adopt the files of publications that a crash interrupted before their row was
        committed (their bytes were verified and durable); the number adopted."""
        adopted = 0
        for publication in await self.store.unfinished_publications():
            done = False
            try:
                async with self.db.transaction() as tx:
                    await tx.execute("lock_blob_exclusive", lock_key(publication.digest))
                    if await self.store.is_published(publication) and await tx.fetchval(
                        "adopt_blob", publication.digest, publication.size
                    ):
                        log.info("adopted %s, published before a crash", publication.digest)
                        adopted += 1
                done = True
            finally:
                await self.store.release_publication(publication, done)
        return adopted

    async def adopt_orphan(self, digest: str) -> BlobInfo | None:
        """A file without a row under ``digest`` (a crash of its publisher), adopted when its
        bytes hash to it; its info, or None if there is no such intact file."""
        if await self.store.stat(digest) is None:
            return None
        found = await hash_stored(self.store, digest)
        if found is None or found[0] != digest:
            return None  # not intact: the scrub quarantines it, an upload replaces it
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_exclusive", lock_key(digest))
            if await self.store.stat(digest) is not None and await tx.fetchval(
                "adopt_blob", digest, found[1]
            ):
                log.info("adopted %s, a verified file without a row", digest)
        return await self.stored(digest)

    async def info(self, digest: str) -> BlobInfo | None:
        row = await self.db.fetchrow("get_blob", digest)
        return None if row is None else _info_from_row(row)

    async def servable(self, digest: str) -> BlobInfo:
        """The blob's info if its row says it can be served, else the error a client should
        see (the bytes are looked at by :meth:`readable` or :meth:`open_for_reading`)."""
        return _servable(digest, await self.info(digest))

    async def readable(self, digest: str) -> BlobInfo:
        """The blob's info if it can be served, else the error a client should see: for
        answers without a body (HEAD, 304), which look at the stored size only."""
        info = await self.servable(digest)
        await self._check_stored_size(info, await self.store.stat(digest))
        return info

    async def _check_stored_size(self, info: BlobInfo, stored: int | None) -> None:
        if stored is None:
            # A quarantine or collection may be moving it right now: wait for it to commit,
            # then answer with what it decided (scrub marks rows whose file vanished missing).
            _servable(info.digest, await self._info_after_writers(info.digest))
            raise BlobNotFound(f"the bytes of blob {info.digest} are missing from the store")
        if stored != info.size:
            await self.quarantine(
                info.digest, reason=f"{stored} bytes stored, {info.size} expected"
            )
            raise BlobQuarantined(f"blob {info.digest} failed verification and is quarantined")

    @contextlib.asynccontextmanager
    async def open_for_reading(
        self, info: BlobInfo, start: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncGenerator[bytes]]:
        """The blob's bytes ``start``..``end``, opened (one store operation) and checked before
        the caller sends any header: the errors a client should see are raised on entry.
        A whole blob (no ``start`` or ``end``) is hashed as it goes, see :meth:`_read_verified`,
        unless the server runs with ``CASD_VERIFY_READS=0``; a range never is."""
        whole = start == 0 and end is None
        hasher = new_hasher() if whole and self.verify_reads else None
        observe = None if hasher is None else hasher.update
        async with contextlib.AsyncExitStack() as stack:
            try:
                reader = await stack.enter_async_context(
                    self.store.open(info.digest, start, end, observe)
                )
            except FileNotFoundError:
                await self._check_stored_size(info, None)
                raise  # not reached: the check raises
            await self._check_stored_size(info, reader.size)
            chunks = (
                read_ahead(aiter(reader))
                if hasher is None
                else self._read_verified(reader, info, hasher)
            )
            async with contextlib.aclosing(chunks):  # also when the consumer stops early
                yield chunks

    async def _info_after_writers(self, digest: str) -> BlobInfo | None:
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_shared", lock_key(digest))
            row = await tx.fetchrow("get_blob", digest)
        return None if row is None else _info_from_row(row)

    async def stored(self, digest: str) -> BlobInfo | None:
        """The blob's info if it is stored and healthy, counting this as a use of it (a
        re-upload). Under the shared lock: the collector either deleted it before (None, so
        the caller sends the bytes again) or sees it used just now and keeps it."""
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_shared", lock_key(digest))
            row = await tx.fetchrow("use_healthy_blob", digest)
        return None if row is None else _info_from_row(row)

    async def _read_verified(
        self, reader: BlobReader, info: BlobInfo, hasher: Any
    ) -> AsyncGenerator[bytes]:
        """The blob's bytes, hashed as they go; the last chunk is held back until the hash is
        known, so a corrupt blob never reaches a client complete. Raises :class:`BlobQuarantined`
        (after quarantining it) instead of yielding that last chunk."""
        held: bytes | None = None
        size = 0
        # Chunks are hashed in the thread that reads them, one chunk ahead of the sending.
        async with contextlib.aclosing(read_ahead(aiter(reader))) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > info.size:
                    break  # grown since recorded: the chunk held back may already fill the body
                if held is not None:
                    yield held
                held = chunk
        if size != info.size or format_digest(hasher) != info.digest:
            await self.quarantine(info.digest, reason="content does not match digest on read")
            raise BlobQuarantined(f"blob {info.digest} is corrupt in the store")
        if held is not None:
            yield held

    async def quarantine(self, digest: str, *, reason: str) -> bool:
        """Move corrupt bytes out of the blob path and mark the row; True if it was done.

        The bytes are hashed once more under the exclusive lock first: a re-upload may have
        replaced them with verified ones since the caller read them (corruption is rare, so
        the second read costs little overall). Bytes that are gone mark the row missing.
        """
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_exclusive", lock_key(digest))
            found = await hash_stored(self.store, digest)
            if found is None:
                await tx.execute("mark_blob_missing", digest)
                return False
            if found[0] == digest:
                return False
            log.warning("quarantining %s: %s", digest, reason)
            await self.store.quarantine(digest)
            await tx.execute("set_blob_status", digest, "quarantined")
        metrics.BLOBS_QUARANTINED.inc()
        return True

    async def mark_missing(self, digest: str) -> bool:
        """Mark a healthy row whose bytes are gone as missing; True if it was done. Decided under
        the exclusive lock: a publish in flight moves its file in place before its row commits.
        """
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_exclusive", lock_key(digest))
            if await self.store.stat(digest) is not None:
                return False
            marked = await tx.fetchval("mark_blob_missing", digest)
        if marked is not None:
            log.warning("blob %s has no bytes in the store: marked missing", digest)
        return marked is not None


def _info_from_row(row: Any) -> BlobInfo:
    return BlobInfo(
        row["digest"], row["size"], row["status"], row["created_at"], row["last_used_at"]
    )


def _servable(digest: str, info: BlobInfo | None) -> BlobInfo:
    """``info`` if its row says the blob can be served, else the error a client should see."""
    if info is None or info.status == "missing":
        raise BlobNotFound(f"no blob {digest}")
    if info.status == "quarantined":
        raise BlobQuarantined(f"blob {digest} failed verification and is quarantined")
    return info


async def read_ahead(source: AsyncIterator[bytes], depth: int = 1) -> AsyncGenerator[bytes]:
    """Fetch up to ``depth`` chunks ahead of the consumer, so that reading (and hashing) the
    next chunk in a thread overlaps with sending this one."""
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def produce() -> None:
        try:
            async for chunk in source:
                await queue.put(chunk)
        except Exception as error:
            await queue.put(error)
        else:
            await queue.put(None)
        finally:
            close = getattr(source, "aclose", None)  # cancelled while it waited on the queue
            if close is not None:
                await close()

    producer = asyncio.create_task(produce())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Cancelling the producer closes the source (and its file) at the await it waits on.
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def hash_stored(
    store: BlobStore, digest: str, pace: Callable[[int], Awaitable[None]] | None = None
) -> tuple[str, int] | None:
    """The digest and size of the bytes stored under ``digest``, None if there are none;
    ``pace(n)`` is awaited after each chunk of n bytes (rate limits)."""
    hasher = new_hasher()
    size = 0
    try:
        async with store.open(digest, observe=hasher.update) as reader:
            async for chunk in reader:
                size += len(chunk)
                if pace is not None:
                    await pace(len(chunk))
    except FileNotFoundError:
        return None
    return format_digest(hasher), size
