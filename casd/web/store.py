"""What the pages show, read with the named queries of ``casd/sql/queries/web.sql``
(and the services' own queries where one exists)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from casd.database import Database, Queries
from casd.errors import CasdError
from casd.names import validate_name_part

FOLDER_PAGE = 100
BLOB_REFERENCES = 100
UPLOADS_SHOWN = 20
CHART_BUCKETS = 48
# The operations page's figures of the whole store are recomputed when older than this.
FIGURES_MAX_AGE = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderEntry:
    """A sub-folder (``record`` None) or a name directly in the folder."""

    path: str  # the name, or the folder ending in '/'
    resume_after: str
    record: dict[str, Any] | None

    @property
    def is_folder(self) -> bool:
        return self.record is None

    @property
    def label(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1] + ("/" if self.is_folder else "")


@dataclass(frozen=True)
class FolderPage:
    folder: str
    entries: list[FolderEntry]
    next_after: str | None  # where the next page starts, None on the last page


@dataclass(frozen=True)
class Upload:
    id: str
    token_id: int
    label: str
    length: int | None
    offset: int
    writing: bool
    created_at: datetime
    updated_at: datetime

    @property
    def percent(self) -> float | None:
        if not self.length:
            return None
        return min(100.0, 100.0 * self.offset / self.length)


@dataclass(frozen=True)
class Point:
    at: datetime
    bytes: int


@dataclass(frozen=True)
class Figures:
    """What the operations page shows of the whole store, as of ``computed_at``."""

    computed_at: datetime
    names: int
    healthy: dict[str, int]  # blobs, bytes
    points: list[Point]  # cumulative healthy bytes over time

    def as_json(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "healthy": self.healthy,
            "points": [[point.at.timestamp(), point.bytes] for point in self.points],
        }

    @classmethod
    def from_json(cls, computed_at: datetime, figures: dict[str, Any]) -> Figures:
        points = [Point(_moment(at), size) for at, size in figures["points"]]
        return cls(computed_at, figures["names"], figures["healthy"], points)


class PageStore:
    """The page queries, over the pool of this process."""

    def __init__(self, db: Database, refreshing: set[asyncio.Task[None]]) -> None:
        self.db = db
        self.refreshing = refreshing  # the background recomputations of this application

    async def folder(
        self,
        folder: str,
        after: str = "",
        limit: int = FOLDER_PAGE,
        readable: tuple[str, ...] | None = None,
    ) -> FolderPage:
        """One page of a folder's entries: its names and sub-folders, in name order; only
        names under ``readable`` (and the folders holding them) if given."""
        validate_name_part(folder, "folder")
        validate_name_part(after.removesuffix("~"), "after")
        scope = None if readable is None else list(readable)
        rows = await self.db.fetch("web_folder_entries", folder, after, limit + 1, scope)
        entries = [_entry(row) for row in rows[:limit]]
        more = len(rows) > limit
        return FolderPage(folder, entries, entries[-1].resume_after if more else None)

    async def blob(self, digest: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("get_blob", digest)
        return None if row is None else dict(row)

    async def blob_references(
        self, digest: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The names that point at a blob now, and the history entries that pointed names at it."""
        names = await self.db.fetch("web_names_of_blob", digest, BLOB_REFERENCES)
        history = await self.db.fetch("web_history_of_blob", digest, BLOB_REFERENCES)
        return [dict(row) for row in names], [dict(row) for row in history]

    async def uploads(self) -> tuple[list[Upload], int]:
        rows = await self.db.fetch("web_uploads", UPLOADS_SHOWN)
        count: int = await self.db.fetchval("web_count_uploads")
        return [_upload(row) for row in rows], count

    async def last_runs(self) -> dict[str, dict[str, Any]]:
        rows = await self.db.fetch("last_maintenance_runs")
        return {
            row["kind"]: {"finished_at": row["finished_at"], "stats": row["stats"]} for row in rows
        }

    async def unhealthy_totals(self) -> dict[str, dict[str, int]]:
        """Quarantined and missing blobs and their bytes, counted now."""
        totals = {status: {"blobs": 0, "bytes": 0} for status in ("quarantined", "missing")}
        for row in await self.db.fetch("web_unhealthy_totals"):
            totals[row["status"]] = {"blobs": row["blobs"], "bytes": row["bytes"]}
        return totals

    async def figures(self, max_age: float = FIGURES_MAX_AGE) -> Figures:
        """The figures of the whole store as last computed; when they are older than
        ``max_age`` seconds they are recomputed in the background (this page shows the last)."""
        row = await self.db.fetchrow("web_figures", max_age)
        if row is None:
            return await self.refresh_figures() or await self.compute_figures()
        if row["stale"]:
            self.refresh_soon()
        return Figures.from_json(row["computed_at"], row["figures"])

    async def compute_figures(self, queries: Queries | None = None) -> Figures:
        """Names, healthy blobs and their bytes, and the bytes over time: a pass over both
        tables (tens of milliseconds with 100,000 blobs)."""
        db = queries or self.db
        rows = await db.fetch("web_blobs_by_status_and_time", CHART_BUCKETS)
        names: int = await db.fetchval("web_count_names")
        healthy = {"blobs": 0, "bytes": 0}
        per_bucket: dict[int, int] = {}
        for row in rows:
            if row["status"] == "ok":
                healthy["blobs"] += row["blobs"]
                healthy["bytes"] += row["bytes"]
                per_bucket[row["bucket"]] = row["bytes"]
        points = _cumulative(rows[0]["lo"], rows[0]["hi"], per_bucket) if rows else []
        return Figures(datetime.now(UTC), names, healthy, points)

    async def refresh_figures(self) -> Figures | None:
        """Compute and keep the figures; None when another process is at it."""
        async with self.db.transaction() as tx:
            if not await tx.fetchval("web_try_lock_figures"):
                return None
            figures = await self.compute_figures(tx)
            computed_at = await tx.fetchval("web_store_figures", figures.as_json())
        return Figures(computed_at, figures.names, figures.healthy, figures.points)

    def refresh_soon(self) -> None:
        """Recompute the figures in the background, once at a time in this application."""
        if self.refreshing:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly())
        self.refreshing.add(task)
        task.add_done_callback(self.refreshing.discard)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_figures()
        except CasdError as error:
            log.warning("web: could not recompute the store's figures: %s", error.detail)


async def stop_refreshing(refreshing: set[asyncio.Task[None]]) -> None:
    """On shutdown: end a background recomputation (its transaction rolls back)."""
    for task in list(refreshing):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _cumulative(low: float, high: float, per_bucket: dict[int, int]) -> list[Point]:
    step = (high - low) / CHART_BUCKETS
    points, total = [Point(_moment(low), 0)], 0
    for bucket in range(1, CHART_BUCKETS + 1):
        total += per_bucket.get(bucket, 0)
        points.append(Point(_moment(low + bucket * step), total))
    return points


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _entry(row: Any) -> FolderEntry:
    record = None
    if not row["is_folder"]:
        record = {
            "name": row["entry"],
            "digest": row["digest"],
            "size": row["size"],
            "version": row["version"],
            "healthy": row["healthy"],
            "updated_at": row["updated_at"],
            "updated_by": row["updated_by"],
        }
    return FolderEntry(row["entry"], row["resume_after"], record)


def _upload(row: Any) -> Upload:
    return Upload(
        id=row["id"],
        token_id=row["token_id"],
        label=row["label"],
        length=row["upload_length"],
        offset=row["upload_offset"],
        writing=row["writing"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
