"""Streaming bytes into one S3 object: parts of a multipart upload, memory bounded by a budget.

A body is cut into parts as it arrives (16 MiB; the size doubles every 1,000 parts, so 10,000
parts reach past S3's 5 TiB object limit without knowing the length first) and up to
:data:`PARTS_IN_FLIGHT` parts of one upload are sent at once. Before an upload fills a part it
reserves the part's bytes from its worker's :class:`ByteBudget` (``CASD_S3_BUFFER``), and the
reservation ends when the store has acknowledged the part: however many uploads run, a worker
never holds more part bytes than the budget, and an upload that cannot reserve waits (so its
client's connection waits too). A reservation is a whole part, never grown, so uploads can
never hold pieces of the budget waiting for each other.

A body that fits in one part never starts a multipart upload: it stays in memory until the one
request that stores it (a conditional PutObject), so a small blob costs one S3 request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from casd.errors import PayloadTooLarge
from casd.stores.s3_client import is_precondition_failed, s3_errors

if TYPE_CHECKING:  # the stubs are a development dependency
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part (but the last)
PART_SIZE = 16 * MiB
PARTS_PER_SIZE = 1000  # the part size doubles after every so many parts
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
PARTS_IN_FLIGHT = 4  # per upload


def part_size(number: int, first: int = PART_SIZE) -> int:
    """The size of part ``number`` (1-based) of an upload whose length is not known."""
    return min(MAX_PART, first << ((number - 1) // PARTS_PER_SIZE))


class ByteBudget:
    """Bytes a worker may hold in upload parts; first come, first served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, size: int) -> int:
        """Reserve ``size`` bytes (at most the whole budget), waiting for them; the bytes
        reserved, to :meth:`release` later."""
        size = min(size, self.limit)
        if not self._waiters and self.used + size <= self.limit:
            self.used += size
            return size
        granted = asyncio.get_running_loop().create_future()
        self._waiters.append((size, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as the waiter went away
            raise
        return size

    def release(self, size: int) -> None:
        self.used -= size
        while self._waiters:
            wanted, granted = self._waiters[0]
            if granted.done():  # its waiter went away
                self._waiters.popleft()
                continue
            if self.used + wanted > self.limit:
                break
            self._waiters.popleft()
            self.used += wanted
            granted.set_result(None)


class S3Upload:
    """Bytes on their way into the object ``key``: buffered, sent in parts, and completed.

    ``complete_at_finish``: :meth:`finish` makes the object exist (a staging object or a
    segment; refused if the key exists: FileExistsError). Otherwise the bytes stay invisible
    until :meth:`complete` or :meth:`put` (a blob key, at publication). ``hold_small``: a body
    of one part is not written by :meth:`finish` but kept for the one request that stores it
    where it belongs (a staging object of a small body would be written only to be copied).
    :meth:`close` aborts whatever was not completed, on every path.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        budget: ByteBudget,
        *,
        complete_at_finish: bool,
        hold_small: bool = True,
        live: set[str],
        first_part: int = PART_SIZE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.budget = budget
        self.complete_at_finish = complete_at_finish
        self.hold_small = hold_small
        self.first_part = first_part
        self.size = 0
        self.finished = False
        self.stored = False  # an object exists at the key, made by this upload
        self.upload_id: str | None = None
        self._live = live  # keys and upload ids of this process's uploads (the sweep skips them)
        self._parts: list[CompletedPartTypeDef] = []
        self._next_part = 1
        self._buffer: list[memoryview] = []
        self._buffered = 0
        self._reserved = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._small: bytes | None = None  # a finished body that never needed a part
        live.add(key)

    @property
    def small(self) -> bytes | None:
        """The whole body, when it fitted in memory (stored by one request)."""
        return self._small

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
            view = memoryview(piece)
            while view:
                if not self._reserved:
                    self._reserved = await self.budget.acquire(self._part_target)
                take = view[: self._part_target - self._buffered]
                self._buffer.append(take)
                self._buffered += len(take)
                self.size += len(take)
                view = view[len(take) :]
                if self._buffered >= self._part_target:
                    await self._send_part()

    @property
    def _part_target(self) -> int:
        return part_size(self._next_part, self.first_part)

    async def finish(self, tail: Sequence[bytes] = ()) -> None:
        """Append ``tail``; then every byte is acknowledged by the store (or, for a body that
        fits in one part, held for the one request that stores it)."""
        tail_size = sum(len(part) for part in tail)
        if self.upload_id is None and self._buffered + tail_size <= self.first_part:
            # Small: no reservation for the tail (it is at most one ingest buffer).
            self._buffer += [memoryview(part) for part in tail if part]
            self._buffered += tail_size
            self.size += tail_size
        else:
            await self.write(tail)
        if self.upload_id is None:
            self._small = b"".join(self._buffer)
            self._buffer, self._buffered = [], 0
            if self.complete_at_finish and not self.hold_small:
                await self.put(self._small, conditional=True)
        else:
            if self._buffered:
                await self._send_part()
            await self._drain()
            if self.complete_at_finish:
                await self.complete(conditional=True)
        self.finished = True

    async def put(self, body: bytes, *, conditional: bool) -> bool:
        """One PutObject of the whole body; False if ``conditional`` and the key exists."""
        try:
            with s3_errors(f"storing {self.key}"):
                await self._put(body, conditional)
        except FileExistsError:
            if self.complete_at_finish:
                raise
            return False
        self.stored = True
        return True

    async def _put(self, body: bytes, conditional: bool) -> None:
        try:
            if conditional:
                await self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*"
                )
            else:
                await self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body)
        except ClientError as error:
            if conditional and is_precondition_failed(error):
                raise FileExistsError(self.key) from error
            raise

    async def complete(self, *, conditional: bool) -> bool:
        """Complete the multipart upload; False if ``conditional`` and the key exists."""
        assert self.upload_id is not None
        parts = sorted(self._parts, key=lambda part: part["PartNumber"])
        try:
            with s3_errors(f"completing {self.key}"):
                try:
                    if conditional:
                        await self.client.complete_multipart_upload(
                            Bucket=self.bucket,
                            Key=self.key,
                            UploadId=self.upload_id,
                            MultipartUpload={"Parts": parts},
                            IfNoneMatch="*",
                        )
                    else:
                        await self.client.complete_multipart_upload(
                            Bucket=self.bucket,
                            Key=self.key,
                            UploadId=self.upload_id,
                            MultipartUpload={"Parts": parts},
                        )
                except ClientError as error:
                    if conditional and is_precondition_failed(error):
                        raise FileExistsError(self.key) from error
                    raise
        except FileExistsError:
            if self.complete_at_finish:
                raise
            return False  # the multipart upload stays open: close() aborts it
        self._forget_upload()
        self.stored = True
        return True

    async def start_multipart(self) -> str:
        if self.upload_id is None:
            with s3_errors(f"starting an upload to {self.key}"):
                answer = await self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)
            self.upload_id = answer["UploadId"]
            self._live.add(self.upload_id)
        return self.upload_id

    async def _send_part(self) -> None:
        """Send the buffered bytes as the next part (one part in flight more)."""
        await self.start_multipart()
        number = self.take_part_number()
        body = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        reserved, self._reserved = self._reserved, 0
        while len(self._inflight) >= PARTS_IN_FLIGHT:
            await self._wait_for_one()
        task = asyncio.create_task(self._upload_part(number, body, reserved))
        self._inflight.add(task)

    async def flush_part(self) -> None:
        """Send what is buffered as a part now, whatever its size (at least MIN_PART unless it
        is the last)."""
        if self._buffered:
            await self._send_part()

    def take_part_number(self) -> int:
        """The number of a part that someone else sends (a server-side copy)."""
        number = self._next_part
        if number > MAX_PARTS:
            raise PayloadTooLarge("the blob is larger than an S3 object may be")
        self._next_part += 1
        return number

    async def add_part(self, number: int, part: CompletedPartTypeDef, size: int) -> None:
        """Record a part that someone else sent (a server-side copy into this upload)."""
        self._parts.append({**part, "PartNumber": number})
        self.size += size

    async def _upload_part(self, number: int, body: bytes, reserved: int) -> None:
        try:
            assert self.upload_id is not None
            with s3_errors(f"sending part {number} of {self.key}"):
                answer = await self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=body,
                )
            part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
            if answer.get("ChecksumCRC32"):
                part["ChecksumCRC32"] = answer["ChecksumCRC32"]
            self._parts.append(part)
        finally:
            if reserved:
                self.budget.release(reserved)

    async def _wait_for_one(self) -> None:
        done, _ = await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            self._inflight.discard(task)
            task.result()  # a failed part fails the upload

    async def _drain(self) -> None:
        while self._inflight:
            await self._wait_for_one()

    def forget(self) -> None:
        """Let go of the upload without aborting it (what a crash does: the sweep removes it)."""
        self._live.discard(self.key)
        self._forget_upload()

    def _forget_upload(self) -> None:
        if self.upload_id is not None:
            self._live.discard(self.upload_id)
        self.upload_id = None

    async def close(self) -> None:
        """Stop sending, abort what was not completed, give back the budget. Never raises."""
        for task in self._inflight:
            task.cancel()
        for task in self._inflight:
            with contextlib.suppress(BaseException):
                await task
        self._inflight.clear()
        if self._reserved:
            self.budget.release(self._reserved)
            self._reserved = 0
        self._buffer, self._small = [], None
        if self.upload_id is not None:
            try:
                await self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )
            except Exception as error:  # the sweep aborts it later
                log.warning("cannot abort the upload to %s: %s", self.key, error)
            self._forget_upload()
        self._live.discard(self.key)
