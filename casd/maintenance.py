"""The periodic maintenance inside ``casd serve``: scrub (``CASD_SCRUB_INTERVAL``),
retention (``CASD_RETENTION_INTERVAL``) and, over S3, the sweep of abandoned uploads.

Every worker of every node runs the loops below; a PostgreSQL advisory lock lets one process
scrub (or apply retention) at a time. The last finished scrub (recorded in ``maintenance_runs``
by the CLI as well) decides when the next one is due, so restarts and extra nodes neither skip
nor repeat scrubs. Retention is idempotent: whichever process holds the lock applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from casd.blobs import BlobService
from casd.config import Settings
from casd.core import Core
from casd.database import Database, Queries
from casd.retention import apply_retention
from casd.scrub import MB, Scrubber

log = logging.getLogger(__name__)

# Second key of the maintenance advisory locks (the first one is constant, see the query).
SCRUB_LOCK = 1
RETENTION_LOCK = 2
SWEEP_LOCK = 3
# How often a shared (S3) store is swept of the uploads that dead nodes abandoned.
SWEEP_SECONDS = 3600.0
# How often a worker looks whether a scrub is due, at most.
POLL_SECONDS = 60.0


@contextlib.asynccontextmanager
async def maintenance_lock(db: Database, key: int) -> AsyncIterator[bool]:
    """Try to take a session advisory lock on a connection of its own; yields whether it did.
    (asyncpg also unlocks everything when the connection goes back to the pool.)"""
    async with db.pool.acquire() as connection:
        queries = Queries(connection)
        held: bool = await queries.fetchval("try_lock_maintenance", key)
        try:
            yield held
        finally:
            if held:
                await queries.fetchval("unlock_maintenance", key)


async def scrub_if_due(blobs: BlobService, settings: Settings) -> bool:
    """Scrub if no scrub finished within the interval and no other process is scrubbing."""
    assert settings.scrub_interval is not None
    interval = settings.scrub_interval
    if not await blobs.db.fetchval("maintenance_due", "scrub", interval):
        return False
    async with maintenance_lock(blobs.db, SCRUB_LOCK) as held:
        # Checked again under the lock: another process may have just finished one.
        if not held or not await blobs.db.fetchval("maintenance_due", "scrub", interval):
            return False
        rate = settings.scrub_max_rate * MB if settings.scrub_max_rate else None
        scrubber = Scrubber(blobs, older_than=interval, max_rate=rate)
        report = await scrubber.run()
    log.info("periodic scrub: %s", "; ".join(report.summary()))
    return True


async def scrub_periodically(blobs: BlobService, settings: Settings) -> None:
    assert settings.scrub_interval is not None
    poll = min(settings.scrub_interval, POLL_SECONDS)
    while True:
        # Jitter spreads the workers of a node (and the nodes) over the poll period.
        await asyncio.sleep(poll * random.uniform(0.5, 1.0))
        try:
            await scrub_if_due(blobs, settings)
        except Exception:
            log.exception("periodic scrub failed; trying again later")


@contextlib.asynccontextmanager
async def periodic_scrub(blobs: BlobService, settings: Settings) -> AsyncIterator[None]:
    """Run the periodic scrub in the background for as long as the context lasts."""
    async with in_background(scrub_periodically(blobs, settings), "casd-periodic-scrub"):
        yield


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``work`` as a task for as long as the context lasts, then cancel it."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retention_if_free(db: Database) -> bool:
    """Apply the retention policies unless another process is applying them now."""
    async with maintenance_lock(db, RETENTION_LOCK) as held:
        if not held:
            return False
        await apply_retention(db)
    return True


async def retention_periodically(db: Database, interval: float) -> None:
    while True:
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        try:
            await retention_if_free(db)
        except Exception:
            log.exception("periodic retention failed; trying again later")


@contextlib.asynccontextmanager
async def periodic_retention(db: Database, settings: Settings) -> AsyncIterator[None]:
    """Apply the retention policies in the background for as long as the context lasts."""
    assert settings.retention_interval is not None
    work = retention_periodically(db, settings.retention_interval)
    async with in_background(work, "casd-periodic-retention"):
        yield


def staging_grace(settings: Settings) -> float:
    """How old abandoned staging must be to be removed. At the start of ``casd serve``, before
    any worker runs, no staging of this server is in use: all of it, for a store of its own. A
    bucket is shared by several nodes, whose uploads go on: only what is older than the longest
    an upload may take."""
    return 0 if settings.s3_location is None else max(24 * 3600, settings.upload_ttl)


async def sweep_if_free(core: Core, older_than: float) -> bool:
    """Sweep the store's abandoned staging unless another process is sweeping it now."""
    async with maintenance_lock(core.db, SWEEP_LOCK) as held:
        if not held:
            return False
        await core.store.sweep_staging(older_than=older_than)
    return True


async def sweep_periodically(core: Core) -> None:
    while True:
        await asyncio.sleep(SWEEP_SECONDS * random.uniform(0.5, 1.0))
        try:
            await sweep_if_free(core, staging_grace(core.settings))
        except Exception:
            log.exception("periodic sweep of abandoned uploads failed; trying again later")


@contextlib.asynccontextmanager
async def periodic_maintenance(core: Core) -> AsyncIterator[None]:
    """The periodic scrub and retention that the settings ask for, and the sweep of a shared
    (S3) store, while the context lasts."""
    settings = core.settings
    async with contextlib.AsyncExitStack() as stack:
        if settings.scrub_interval:
            await stack.enter_async_context(periodic_scrub(core.blobs, settings))
        if settings.retention_interval:
            await stack.enter_async_context(periodic_retention(core.db, settings))
        if settings.s3_location is not None:
            sweep = in_background(sweep_periodically(core), "casd-periodic-sweep")
            await stack.enter_async_context(sweep)
        yield
