"""The composition root: the one place where the database, the blob store and the services of
one process are opened, wired together and closed.

``casd serve`` (its bootstrap and each worker), the administrative commands and the tests all
open a :class:`Core` with :func:`open_core`; the HTTP application (``casd.http.app``) and the
pages (``casd.web``) only add routes over it, so several surfaces can share one core.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from casd.auth import TokenStore
from casd.blobs import BlobService
from casd.config import Settings
from casd.database import Database
from casd.names import NameService
from casd.policies import PolicyService
from casd.stores import BlobStore
from casd.stores.file import FileBlobStore
from casd.upload_slots import UploadSlots
from casd.uploads import UploadService


@dataclass(frozen=True)
class Core:
    """The services of one process over one database and one blob store."""

    settings: Settings
    db: Database
    store: BlobStore
    blobs: BlobService
    names: NameService
    policies: PolicyService
    tokens: TokenStore
    uploads: UploadService
    upload_slots: UploadSlots


def open_store(settings: Settings) -> BlobStore:
    """The blob store the settings name: the file store in the data directory, or an S3
    bucket (``--blob-store s3://BUCKET[/PREFIX]``; its client is opened on first use)."""
    location = settings.s3_location
    if location is not None:
        from casd.stores.s3 import S3BlobStore  # aiobotocore is imported only when used

        return S3BlobStore(location, settings.s3_buffer)
    return FileBlobStore(settings.blobs_dir, settings.staging_dir, settings.quarantine_dir)


async def close_store(store: BlobStore) -> None:
    """Let go of what a store holds open (the S3 store's connections)."""
    close = getattr(store, "close", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def open_core(
    settings: Settings,
    database_url: str,
    *,
    pool_size: int | None = None,
    wait_limit: float | None = None,
    listen: bool = True,
) -> AsyncIterator[Core]:
    """Open the database pool, the blob store and every service; close them in reverse order.

    ``listen``: take part in what the processes of a server tell each other through PostgreSQL
    (upload leases, token revocations) and take over the uploads a crash left. A serving
    process does; a one-shot command (scrub, gc, token) need not. ``pool_size`` and
    ``wait_limit`` (the longest wait for PostgreSQL) default to ``CASD_DB_POOL_SIZE`` and
    ``CASD_DB_TIMEOUT``. The database must be migrated already.
    """
    db = await Database.connect(
        database_url,
        max_size=pool_size or settings.db_pool_size,
        wait_limit=wait_limit or settings.db_timeout,
    )
    store = open_store(settings)
    try:
        blobs = BlobService(db, store, settings.max_blob_size, verify_reads=settings.verify_reads)
        core = Core(
            settings=settings,
            db=db,
            store=store,
            blobs=blobs,
            names=NameService(db),
            policies=PolicyService(db),
            tokens=TokenStore(db),
            uploads=UploadService(db, store, blobs, settings.upload_ttl),
            upload_slots=UploadSlots(settings.max_uploads_per_token),
        )
        if not listen:
            yield core
            return
        async with _listening(core, database_url):
            yield core
    finally:
        await close_store(store)
        await db.close()


@contextlib.asynccontextmanager
async def _listening(core: Core, database_url: str) -> AsyncIterator[None]:
    await core.tokens.watch_revocations(database_url)
    try:
        await core.uploads.start()
        try:
            await core.uploads.recover_after_crash()  # a worker restarted after its own crash
            yield
        finally:
            await core.uploads.close()
    finally:
        await core.tokens.close()
