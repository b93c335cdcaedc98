"""Scrub: re-hash stored blobs, quarantine the corrupt, and reconcile the store with the table.

A scrub runs next to serving, on any node and next to another scrub: whatever it changes it
decides again under the blob's exclusive advisory lock, and a publish in flight holds the shared
lock from the moment its file appears until its row commits, so it is never taken for an orphan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from casd import metrics
from casd.blobs import BlobService, hash_stored
from casd.database import Queries
from casd.digests import lock_key, parse_digest
from casd.errors import InvalidDigest

log = logging.getLogger(__name__)

# Rows fetched, and store entries listed, per round trip.
BATCH = 500
MB = 1_000_000


class Throttle:
    """Paces a stream of bytes to at most ``rate`` bytes per second, without bursts."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_free = time.monotonic()

    async def __call__(self, nbytes: int) -> None:
        now = time.monotonic()
        self.next_free = max(self.next_free, now) + nbytes / self.rate
        await asyncio.sleep(self.next_free - now)


@dataclass
class ScrubReport:
    """What a scrub found; the blob counts come with their bytes where that means something."""

    checked: int = 0  # blobs re-hashed
    checked_bytes: int = 0
    present: int = 0  # verified recently: only checked to be there
    corrupt: int = 0  # found not to match their digest, now quarantined
    corrupt_bytes: int = 0
    missing: int = 0  # rows whose bytes are gone, now marked missing
    restored: int = 0  # missing rows whose intact bytes came back
    adopted: int = 0  # files without a row, verified and recorded
    adopted_bytes: int = 0
    orphans_quarantined: int = 0  # files without a row that do not match their name
    foreign_files: int = 0  # files in the blob tree whose name is no digest (left alone)
    seconds: float = 0.0

    @property
    def damaged(self) -> bool:
        """Whether stored data was found lost or corrupt (reconciled orphans are not damage)."""
        return bool(self.corrupt or self.missing or self.orphans_quarantined)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"damaged": self.damaged}

    def summary(self) -> list[str]:
        return [
            f"checked {self.checked} blobs ({self.checked_bytes} bytes) in {self.seconds:.1f}s;"
            f" {self.present} more verified recently and present",
            f"corrupt: {self.corrupt} blobs ({self.corrupt_bytes} bytes), quarantined",
            f"missing: {self.missing} blobs newly marked missing, {self.restored} restored",
            f"orphan files: {self.adopted} adopted ({self.adopted_bytes} bytes),"
            f" {self.orphans_quarantined} quarantined, {self.foreign_files} foreign files ignored",
        ]


class Scrubber:
    """One scrub: every row is checked against the store, then every stored file against the
    table. ``older_than`` (seconds) re-hashes only blobs not verified for that long (the others
    are only checked to be present); ``max_rate`` (bytes per second) paces the reading."""

    def __init__(
        self, blobs: BlobService, *, older_than: float | None = None, max_rate: float | None = None
    ) -> None:
        self.blobs = blobs
        self.db = blobs.db
        self.store = blobs.store
        self.older_than = older_than
        self.pace = Throttle(max_rate) if max_rate else None
        self.report = ScrubReport()

    async def run(self) -> ScrubReport:
        """Scrub and reconcile everything, record the run, and return what was found."""
        started = time.monotonic()
        await self.check_rows()
        await self.check_files()
        self.report.seconds = time.monotonic() - started
        stats = self.report.as_dict()
        await self.db.execute("record_maintenance_run", "scrub", self.report.seconds, stats)
        return self.report

    async def check_rows(self) -> None:
        after = ""
        while rows := await self.db.fetch("scrub_batch", after, BATCH, self.older_than):
            for row in rows:
                if row["status"] == "missing":
                    await self.check_missing(row["digest"])
                elif row["due"]:
                    await self.verify(row["digest"], row["size"])
                else:
                    await self.check_present(row["digest"])
            after = rows[-1]["digest"]

    async def verify(self, digest: str, size: int) -> None:
        found = await hash_stored(self.store, digest, self.pace)
        if found is None:
            await self.mark_missing(digest)
            return
        self.count_checked(found[1])
        if found[0] == digest:
            await self.db.execute("set_blob_verified", digest)
        elif await self.blobs.quarantine(digest, reason="scrub: content does not match digest"):
            self.report.corrupt += 1
            self.report.corrupt_bytes += size
            metrics.SCRUB_FINDINGS.labels("corrupt").inc()

    def count_checked(self, size: int) -> None:
        self.report.checked += 1
        self.report.checked_bytes += size
        metrics.SCRUBBED_BLOBS.inc()
        metrics.SCRUBBED_BYTES.inc(size)

    async def check_present(self, digest: str) -> None:
        if await self.store.stat(digest) is not None:
            self.report.present += 1
        else:
            await self.mark_missing(digest)

    async def mark_missing(self, digest: str) -> None:
        if await self.blobs.mark_missing(digest):
            self.report.missing += 1
            metrics.SCRUB_FINDINGS.labels("missing").inc()

    async def check_missing(self, digest: str) -> None:
        """A row marked missing whose bytes may have come back (restored from a backup)."""
        found = await hash_stored(self.store, digest, self.pace)
        if found is None:
            return
        self.count_checked(found[1])
        if found[0] != digest:
            await self.blobs.quarantine(digest, reason="scrub: restored bytes do not match")
            return
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_exclusive", lock_key(digest))
            restored = await self.store.stat(digest) is not None and await tx.fetchval(
                "restore_missing_blob", digest
            )
        if restored:
            log.info("the bytes of missing blob %s are back and intact", digest)
            self.report.restored += 1
            metrics.SCRUB_FINDINGS.labels("restored").inc()

    async def check_files(self) -> None:
        """Files in the store that have no row: adopted when intact, else quarantined."""
        async for batch in self.stored_digests():
            known = {row["digest"] for row in await self.db.fetch("digests_with_rows", batch)}
            for digest in batch:
                if digest not in known:
                    await self.check_orphan(digest)

    async def stored_digests(self) -> AsyncIterator[list[str]]:
        async for page in self.store.list_digests():
            yield [digest for digest in page if self.is_digest(digest)]

    def is_digest(self, name: str) -> bool:
        try:
            parse_digest(name)
        except InvalidDigest:
            log.warning("scrub: %r in the blob store is not a blob; left alone", name)
            self.report.foreign_files += 1
            return False
        return True

    async def check_orphan(self, digest: str) -> None:
        # Hashed before locking, so uploads of this digest never wait for the hashing. Under
        # the lock, "still no row" means no publish touched the file since (publish commits a
        # row with its file), and the file still being there rules out a publish-and-collect.
        found = await hash_stored(self.store, digest, self.pace)
        if found is None:
            return
        self.count_checked(found[1])
        async with self.db.transaction() as tx:
            await tx.execute("lock_blob_exclusive", lock_key(digest))
            if await self.store.stat(digest) is None:
                return
            if found[0] == digest:
                await self.adopt(tx, digest, found[1])
            elif not await tx.fetch("digests_with_rows", [digest]):
                await self.quarantine_orphan(digest)

    async def adopt(self, tx: Queries, digest: str, size: int) -> None:
        if await tx.fetchval("adopt_blob", digest, size) is None:
            return  # a publish recorded it meanwhile
        log.info("scrub: adopted %s (%d bytes), a verified file without a row", digest, size)
        self.report.adopted += 1
        self.report.adopted_bytes += size
        metrics.SCRUB_FINDINGS.labels("adopted").inc()

    async def quarantine_orphan(self, digest: str) -> None:
        log.warning("scrub: quarantining %s, a file without a row that does not match", digest)
        if await self.store.quarantine(digest) is not None:
            self.report.orphans_quarantined += 1
            metrics.SCRUB_FINDINGS.labels("orphan_quarantined").inc()
