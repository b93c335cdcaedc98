"""The one ingest pipeline: bytes hashed and written to a staged object at the same time.

Both ways in use it: a single request's body (:meth:`casd.blobs.BlobService.ingest`) and the
requests of a resumable upload (:mod:`casd.uploads`, one segment after another). One buffer is
hashed and written on two threads (blake3 and file writes release the GIL) while the next one
arrives, so memory stays flat at about two buffers per upload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import blake3

from casd.stores import StagedBlob

# Bytes handed to the hashing and writing threads at a time: large enough that thread hand-offs
# cost little, small enough to keep memory flat while one buffer is received and one absorbed.
INGEST_BUFFER = 1024 * 1024
# Below this, hashing on the event loop is cheaper than a thread hand-off.
INLINE_HASH_LIMIT = 128 * 1024


class HashingWriter:
    """Hashes bytes and appends them to a staged object, one buffer in flight at a time.

    ``end`` counts the bytes handed over (the buffer in flight included), ``hashed`` those the
    hasher covers: -1 once a write failed after its bytes were hashed (the hasher then no longer
    matches the stored bytes and must not be reused). ``staged`` may be replaced between buffers
    (a resumable upload moves to its next segment at a checkpoint).
    """

    def __init__(self, staged: StagedBlob, hasher: blake3.blake3, start: int = 0) -> None:
        self.staged = staged
        self.hasher = hasher
        self.end = start
        self.hashed = start
        self._inflight: asyncio.Future[None] | None = None

    async def absorb(self, parts: Sequence[bytes]) -> None:
        """Hand over one buffer; returns once the previous one is hashed and written."""
        await self.settle()
        self.end += _size(parts)
        self._inflight = asyncio.ensure_future(self._absorb(parts))

    async def _absorb(self, parts: Sequence[bytes]) -> None:
        try:
            if _size(parts) <= INLINE_HASH_LIMIT:
                _update(self.hasher, parts)
                await self.staged.write(parts)
            else:
                write = self.staged.write(parts)
                await asyncio.gather(asyncio.to_thread(_update, self.hasher, parts), write)
        except BaseException:
            self.hashed = -1
            raise
        if self.hashed >= 0:
            self.hashed += _size(parts)

    async def hash_tail(self, parts: Sequence[bytes]) -> None:
        """Hash the last buffer without writing it: the caller writes it with the fsync
        (:meth:`StagedBlob.finish`), for a small blob one thread hand-off in all."""
        await self.settle()
        if _size(parts) <= INLINE_HASH_LIMIT:
            _update(self.hasher, parts)
        else:
            await asyncio.to_thread(_update, self.hasher, parts)
        self.end += _size(parts)

    async def settle(self) -> None:
        """Wait for the buffer in flight (its error, if any, is raised here)."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            await inflight

    async def close(self) -> None:
        """Never leave a thread writing to a staged object that is about to go away."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        if not inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(inflight)
        if not inflight.cancelled():
            inflight.exception()  # retrieved: the caller already has the error that ended it


async def gather_parts(
    chunks: AsyncIterable[bytes], size: int = INGEST_BUFFER
) -> AsyncIterator[tuple[list[bytes], int]]:
    """Group a stream of chunks into lists of at least ``size`` bytes (and their size),
    without joining them: the chunks go to the hasher and to writev as they are."""
    parts: list[bytes] = []
    gathered = 0
    async for chunk in chunks:
        parts.append(chunk)
        gathered += len(chunk)
        if gathered >= size:
            yield parts, gathered
            parts, gathered = [], 0
    if parts:
        yield parts, gathered


def _size(parts: Sequence[bytes]) -> int:
    return sum(len(part) for part in parts)


def _update(hasher: blake3.blake3, parts: Sequence[bytes]) -> None:
    for part in parts:
        hasher.update(part)
