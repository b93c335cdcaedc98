"""Garbage collection: delete blobs that nothing keeps, online and without races.

A blob is kept while a name references it, while it is among the last ``keep_versions``
distinct digests of any name's history, or while it was uploaded (or re-uploaded) within the
grace period. Each candidate is deleted in its own transaction under the blob's exclusive
advisory lock, the conditions checked afresh: the row goes first, then the file, then the commit.
Publishing and naming take the shared lock, so an upload of the same bytes either comes first
(the fresh check sees it used just now and keeps the blob) or waits and then re-creates the file
and the row together. A blob row never outlives its file because of the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from casd import metrics
from casd.blobs import BlobService
from casd.digests import lock_key
from casd.errors import CasdError

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class GcReport:
    """What a collection deleted (or, in a dry run, would delete)."""

    dry_run: bool = False
    collected: int = 0
    collected_bytes: int = 0
    kept: int = 0  # candidates found in use again on the second look
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        verb = "would collect" if self.dry_run else "collected"
        return (
            f"{verb} {self.collected} blobs ({self.collected_bytes} bytes) in {self.seconds:.1f}s;"
            f" {self.kept} candidates were in use again"
        )


class Collector:
    """One garbage collection with the given policy; ``grace`` in seconds. ``on_blob(digest,
    size)`` is called for every blob collected (in a dry run: every blob that would be)."""

    def __init__(
        self,
        blobs: BlobService,
        *,
        keep_versions: int,
        grace: float,
        dry_run: bool = False,
        on_blob: Callable[[str, int], None] | None = None,
    ) -> None:
        self.blobs = blobs
        self.on_blob = on_blob
        self.db = blobs.db
        self.store = blobs.store
        self.keep_versions = keep_versions
        self.grace = grace
        self.report = GcReport(dry_run=dry_run)

    async def run(self) -> GcReport:
        """Collect every blob the policy lets go (list them in a dry run) and report."""
        started = time.monotonic()
        after = ""
        while rows := await self.db.fetch(
            "gc_candidates", after, self.keep_versions, self.grace, BATCH
        ):
            for row in rows:
                await self.consider(row["digest"], row["size"])
            after = rows[-1]["digest"]
        self.report.seconds = time.monotonic() - started
        if not self.report.dry_run:
            stats = self.report.as_dict()
            await self.db.execute("record_maintenance_run", "gc", self.report.seconds, stats)
        return self.report

    async def consider(self, digest: str, size: int) -> None:
        if not self.report.dry_run:
            collected = await self.collect(digest)
            if collected is None:
                self.report.kept += 1
                return
            size = collected
            metrics.COLLECTED_BLOBS.inc()
            metrics.COLLECTED_BYTES.inc(size)
        self.report.collected += 1
        self.report.collected_bytes += size
        if self.on_blob is not None:
            self.on_blob(digest, size)

    async def collect(self, digest: str) -> int | None:
        """Delete one blob if it is still collectable; its size if it was deleted."""
        unlinked = False
        try:
            async with self.db.transaction() as tx:
                await tx.execute("lock_blob_exclusive", lock_key(digest))
                size: int | None = await tx.fetchval(
                    "gc_delete_blob", digest, self.keep_versions, self.grace
                )
                if size is None:
                    return None
                # Unlinked before the commit, while the lock keeps publishers out: after the
                # commit, a publish of the same bytes could re-create file and row in between.
                await self.store.delete(digest)
                unlinked = True
        except BaseException:
            if unlinked:
                # The commit failed (or was interrupted) after the file went: the row may have
                # survived without its bytes. Mark it missing now; scrub does it otherwise.
                await asyncio.shield(self.mark_missing_after_failed_commit(digest))
            raise
        log.info("collected %s (%d bytes)", digest, size)
        return size

    async def mark_missing_after_failed_commit(self, digest: str) -> None:
        with contextlib.suppress(CasdError):
            await self.blobs.mark_missing(digest)
