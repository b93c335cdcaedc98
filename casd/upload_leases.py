"""Who may write to a resumable upload, agreed in PostgreSQL by every casd process.

Every request that arrives for an upload bumps the upload's epoch: the newest request wins.
The request that appends bytes (the writer) records its epoch and its process in the row.
Every process listens on one channel and ends its own writer as soon as a newer request for
that upload arrives, in whichever process; the newcomer waits until the writer has recorded
its durable offset and let go. A process counts as alive while it holds the session advisory
lock ``(casd, number)`` on its listening connection, so the writer of a crashed process is
recognised at once and its last recorded offset stands. No pooled connection or transaction
is held while a writer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from casd.database import Database, Queries
from casd.errors import CasdError, MismatchingUploadOffset, Unavailable, UploadNotFound
from casd.stores import Segment

log = logging.getLogger(__name__)

CHANNEL = "casd_uploads"
# The first key of every process lock: "casd". The second is the process's number.
PROCESS_LOCK_NAMESPACE = 0x63617364
# A waiter re-reads the row this often even when no notification wakes it.
POLL_SECONDS = 0.25
# How long a request waits for an earlier writer to end before giving up with 503.
TAKEOVER_TIMEOUT = 60.0
RECONNECT_SECONDS = 1.0


class StopReason(enum.Enum):
    """Why a writer must end before its body does."""

    SUPERSEDED = "a newer request for this upload took over"
    GONE = "the upload was removed"
    SHUTDOWN = "the server is shutting down"
    LOST = "the server lost its database connection"


class UploadCompleted(Exception):
    """A request arrived for an upload that is complete: its blob is stored."""

    def __init__(self, digest: str, size: int) -> None:
        super().__init__(f"the upload is complete: {digest}")
        self.digest = digest
        self.size = size


@dataclass(frozen=True)
class UploadRow:
    """The shared state of an upload as one request sees it."""

    offset: int
    length: int | None
    expected_digest: str | None
    segments: tuple[Segment, ...] = ()  # hold the first ``offset`` bytes, in order

    @classmethod
    def of(cls, row: Any) -> UploadRow:
        segments = tuple(Segment(name, size) for name, size in row["segments"])
        return cls(row["upload_offset"], row["upload_length"], row["expected_digest"], segments)


def _check_not_completed(row: Any) -> None:
    if row["completed_digest"] is not None:
        raise UploadCompleted(row["completed_digest"], row["upload_offset"])


class Lease:
    """The right of one request to append to one upload, until it is released or stopped."""

    def __init__(self, upload_id: str, epoch: int, row: UploadRow) -> None:
        self.upload_id = upload_id
        self.epoch = epoch
        self.row = row
        self.reason: StopReason | None = None
        self._on_stop: Callable[[StopReason], None] | None = None

    def stop(self, reason: StopReason) -> None:
        """Ask the writer to end (called from the notification listener)."""
        if self.reason is None:
            self.reason = reason
            if self._on_stop is not None:
                self._on_stop(reason)

    def on_stop(self, callback: Callable[[StopReason], None]) -> None:
        """Call ``callback`` when the writer must end (at once if it must already)."""
        self._on_stop = callback
        if self.reason is not None:
            callback(self.reason)


class UploadLeases:
    """The lease bookkeeping of one casd process."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.process: int | None = None
        self._connection: asyncpg.Connection | None = None
        self._leases: dict[str, set[Lease]] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the listening connection and take this process's lock."""
        connection = await self.db.connect_dedicated()
        try:
            process = await _lock_process_number(connection)
            await connection.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            await connection.close()
            raise
        connection.add_termination_listener(self._on_connection_lost)
        self._connection, self.process = connection, process
        log.info("upload leases: this process is number %d", process)

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    def stop_all(self, reason: StopReason) -> None:
        """End every writer of this process (shutdown, lost connection)."""
        for leases in list(self._leases.values()):
            for lease in list(leases):
                lease.stop(reason)

    def require_process(self) -> int:
        if self.process is None:
            raise Unavailable("the server is reconnecting to its database", retry_after=RETRY)
        return self.process

    async def create(self, upload_id: str, token_id: int, row: UploadRow) -> Lease:
        """Insert a new upload, held by the request that creates it."""
        process = self.require_process()
        await self.db.execute(
            "insert_upload", upload_id, token_id, row.length, row.expected_digest, process
        )
        lease = Lease(upload_id, 1, row)
        self._register(lease)
        return lease

    async def acquire(self, upload_id: str, token_id: int) -> Lease:
        """Become the writer of an upload, after ending an earlier writer."""
        with self._news_of(upload_id) as news:
            lease, row = await self._arrive(upload_id, token_id)
            self._register(lease)
            try:
                await self._wait_for_writer(lease, row, news, claim=True)
            except BaseException:
                self._unregister(lease)
                raise
        return lease

    async def observe(self, upload_id: str, token_id: int) -> UploadRow:
        """The upload's true state, after ending a writer that was there before."""
        with self._news_of(upload_id) as news:
            lease, row = await self._arrive(upload_id, token_id)
            await self._wait_for_writer(lease, row, news, claim=False)
        return lease.row

    async def checkpoint(self, lease: Lease, offset: int, segments: Sequence[Segment]) -> bool:
        """Record durable progress: the offset and the segments that hold the bytes up to it,
        only while the lease holds; False if it did not. A writer that learns it is superseded
        is stopped."""
        epoch = await self.db.fetchval(
            "checkpoint_upload", lease.upload_id, lease.epoch, offset, _encoded(segments)
        )
        if epoch is None:
            lease.stop(StopReason.GONE)
        elif epoch > lease.epoch:
            lease.stop(StopReason.SUPERSEDED)
        return epoch is not None

    async def set_length(self, lease: Lease, length: int) -> None:
        await self.db.execute("set_upload_length", lease.upload_id, lease.epoch, length)

    async def release(self, lease: Lease, offset: int, segments: Sequence[Segment]) -> bool:
        """Record the final durable offset with its segments and let go; False if the lease
        was lost (nothing was recorded)."""
        try:
            row = await self.db.fetchrow(
                "release_upload", lease.upload_id, lease.epoch, offset, _encoded(segments)
            )
        finally:
            self._unregister(lease)
        return row is not None

    async def complete(self, tx: Queries, lease: Lease, digest: str, size: int) -> bool:
        """Record in ``tx`` (the one that records the blob) that the upload is complete; the
        lease ends with it. False if the lease was lost (the upload removed meanwhile)."""
        return (
            await tx.fetchrow("complete_upload", lease.upload_id, lease.epoch, digest, size)
            is not None
        )

    def finished(self, lease: Lease) -> None:
        """Forget a lease whose upload was completed."""
        self._unregister(lease)

    async def remove(self, lease: Lease) -> bool:
        """Delete the upload's row (finished or discarded); False if the lease was lost."""
        try:
            return await self.db.fetchval("delete_upload", lease.upload_id, lease.epoch) is not None
        finally:
            self._unregister(lease)

    async def _arrive(self, upload_id: str, token_id: int) -> tuple[Lease, Any]:
        """Become the newest request for the upload; the lease and the row as it was then."""
        self.require_process()
        row = await self.db.fetchrow("bump_upload_epoch", upload_id, token_id)
        if row is None:
            raise UploadNotFound(f"no upload {upload_id} for this token")
        lease = Lease(upload_id, row["epoch"], UploadRow.of(row))
        self._stop_older(upload_id, lease.epoch)
        return lease, row

    async def _wait_for_writer(
        self, lease: Lease, row: Any, news: asyncio.Event, *, claim: bool
    ) -> None:
        """Until no earlier writer holds the upload (and, with ``claim``, this request does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TAKEOVER_TIMEOUT
        while True:
            _check_not_completed(row)
            if claim:
                _check_still_newest(lease, row)
            lease.row = UploadRow.of(row)
            writer = await self._live_writer(lease.upload_id, row)
            if writer is None and not claim:
                return
            if writer is not None and writer > lease.epoch and not claim:
                return  # a newer request writes now: the recorded offset is the answer
            if writer is None and await self._claim(lease):
                return
            if loop.time() > deadline:
                raise Unavailable(
                    "an earlier request to this upload does not end", retry_after=RETRY
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), POLL_SECONDS)
            news.clear()  # before reading: news that arrives while we read wakes the next wait
            row = await self._lease_row(lease.upload_id)

    async def _lease_row(self, upload_id: str) -> Any:
        row = await self.db.fetchrow("get_upload_lease", upload_id)
        if row is None:
            raise UploadNotFound(f"upload {upload_id} was removed")
        return row

    async def _live_writer(self, upload_id: str, row: Any) -> int | None:
        """The epoch of the writer, None if there is none or its process is gone."""
        writer: int | None = row["writer_epoch"]
        if writer is None or await self._process_alive(upload_id, row["writer_process"], writer):
            return writer
        log.warning("upload %s: the process of its writer is gone, taking over", upload_id)
        await self.db.execute("clear_dead_writer", upload_id, writer)
        return None

    async def _process_alive(self, upload_id: str, process: int, epoch: int) -> bool:
        if process == self.process:
            # Ours: alive while a request of this process still holds that lease.
            return any(lease.epoch == epoch for lease in self._leases.get(upload_id, ()))
        alive: bool = await self.db.fetchval(
            "upload_process_alive", PROCESS_LOCK_NAMESPACE, process
        )
        return alive

    async def _claim(self, lease: Lease) -> bool:
        row = await self.db.fetchrow(
            "claim_upload", lease.upload_id, lease.epoch, self.require_process()
        )
        if row is None:
            return False
        lease.row = UploadRow.of(row)
        return True

    @contextlib.contextmanager
    def _news_of(self, upload_id: str) -> Iterator[asyncio.Event]:
        """An event set by every notification about the upload while the block runs."""
        event = asyncio.Event()
        self._waiters.setdefault(upload_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(upload_id, set())
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(upload_id, None)

    def holds(self, lease: Lease) -> bool:
        """Whether ``lease`` was neither released nor removed yet."""
        return lease in self._leases.get(lease.upload_id, ())

    def _register(self, lease: Lease) -> None:
        self._leases.setdefault(lease.upload_id, set()).add(lease)

    def _unregister(self, lease: Lease) -> None:
        leases = self._leases.get(lease.upload_id, set())
        leases.discard(lease)
        if not leases:
            self._leases.pop(lease.upload_id, None)

    def _stop_older(self, upload_id: str, epoch: int) -> None:
        for lease in list(self._leases.get(upload_id, ())):
            if lease.epoch < epoch:
                lease.stop(StopReason.SUPERSEDED)

    def _on_notification(self, connection: Any, pid: int, channel: str, payload: object) -> None:
        upload_id, _, epoch = str(payload).partition(" ")
        if epoch.isdigit():
            self._stop_older(upload_id, int(epoch))
        for event in self._waiters.get(upload_id, ()):
            event.set()

    def _on_connection_lost(self, connection: Any) -> None:
        if self._closed or connection is not self._connection:
            return
        log.error("upload leases: lost the database connection; ending this process's writers")
        self._connection, self.process = None, None
        self.stop_all(StopReason.LOST)
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                await self.start()
                return
            except (CasdError, OSError) as error:
                log.warning("upload leases: reconnecting failed: %s", error)


# Seconds after which a request refused for a passing reason may try again.
RETRY = 1


def _encoded(segments: Sequence[Segment]) -> list[list[str | int]]:
    """Segments as the row keeps them: a JSON array of [name, size]."""
    return [[segment.name, segment.size] for segment in segments]


async def _lock_process_number(connection: asyncpg.Connection) -> int:
    """A process number nobody else holds, locked for the life of ``connection``."""
    queries = Queries(connection)
    while True:
        number = random.randint(1, 2**31 - 1)
        if await queries.fetchval("lock_upload_process", PROCESS_LOCK_NAMESPACE, number):
            return number


def _check_still_newest(lease: Lease, row: Any) -> None:
    """Raise if a request that waits to write was stopped or overtaken while it waited."""
    if lease.reason in (StopReason.SHUTDOWN, StopReason.LOST):
        raise Unavailable(lease.reason.value, retry_after=RETRY)
    if lease.reason is not None or row["epoch"] > lease.epoch:
        offset = row["upload_offset"]
        raise MismatchingUploadOffset(
            f"{StopReason.SUPERSEDED.value}; the upload continues at byte {offset}", offset=offset
        )
