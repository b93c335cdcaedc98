"""Names: human names mapped to blob digests, changed only by compare-and-swap, with history.

Every change of a name and its history row are written by one statement in one transaction,
after the writer has locked the name's row (or, to create or delete it, the name's lifecycle
lock) and checked the version it expects. A name may only reference a stored, healthy blob:
the writer holds the blob's shared advisory lock and its row until commit, so the collector
(which takes the lock exclusively) never removes a blob that a name is about to reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import blake3

from casd import wire
from casd.database import Database, Queries
from casd.digests import lock_key, parse_digest
from casd.errors import (
    InvalidName,
    InvalidRequest,
    NameConflict,
    NameNotFound,
    PreconditionFailed,
    UnknownBlob,
)
from casd.wire import iso_utc as iso_utc  # how the API writes a moment

NAME_MAX_BYTES = 512
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._+@-]*"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
# What listings accept as a prefix or a starting point: any run of name characters.
_NAME_PART = re.compile(r"[A-Za-z0-9._+@/-]*")

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_NO_VERSION_LIMIT = 2**63 - 1


def validate_name(name: str) -> str:
    """Return ``name`` if the contract allows it, else raise :class:`InvalidName`."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= NAME_MAX_BYTES:
        raise InvalidName(f"a name has 1 to {NAME_MAX_BYTES} bytes, this one {size}")
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"{name[:100]!r} is not segments joined by '/', each a letter or digit "
            "followed by letters, digits or . _ + @ -"
        )
    return name


def validate_name_part(text: str, what: str) -> str:
    """A listing's ``prefix`` or ``after``: name characters only, at most a name's length."""
    if len(text) > NAME_MAX_BYTES or not _NAME_PART.fullmatch(text):
        raise InvalidRequest(f"{what} {text[:100]!r} cannot be part of a name")
    return text


def validate_page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def name_lock_key(name: str) -> int:
    """A signed 32-bit key for the name's lifecycle lock, the same in every process."""
    return int.from_bytes(blake3.blake3(name.encode()).digest()[:4], "big", signed=True)


def check_metadata(metadata: Any) -> dict[str, Any]:
    """Return ``metadata`` if it is a JSON object PostgreSQL can store, else raise."""
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a JSON object")
    pending: list[Any] = [metadata]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            _check_storable_text(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest("metadata numbers must be finite")
    return metadata


def _check_storable_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidRequest("metadata text cannot hold the character U+0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRequest("metadata text must be valid Unicode (no lone surrogates)") from error


@dataclass(frozen=True)
class NameRecord:
    """What a name points at now."""

    name: str
    digest: str
    size: int
    version: int
    metadata: dict[str, Any]
    healthy: bool
    updated_at: datetime
    updated_by: str

    @classmethod
    def from_row(cls, row: Any, **overrides: Any) -> NameRecord:
        values = {field: row[field] for field in cls.__dataclass_fields__ if field not in overrides}
        return cls(**values, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return wire.NameRecord.of(self).to_json()


@dataclass(frozen=True)
class HistoryEntry:
    """One change of a name: ``create``, ``update`` or ``delete``."""

    version: int
    action: str
    digest: str | None
    previous_digest: str | None
    metadata: dict[str, Any] | None
    actor: str
    at: datetime
    source_name: str | None = None  # a promotion: the name and version it copied
    source_version: int | None = None

    @classmethod
    def from_row(cls, row: Any) -> HistoryEntry:
        return cls(**dict(row))

    @property
    def source(self) -> dict[str, Any] | None:
        if self.source_name is None:
            return None
        return {"name": self.source_name, "version": self.source_version}

    def as_dict(self) -> dict[str, Any]:
        return wire.HistoryEntry.of(self).to_json()


@dataclass(frozen=True)
class Precondition:
    """What a write expects of the name: absent (``If-None-Match: *``), or present at one of
    ``versions`` (``If-Match``; ``None`` stands for ``*``, any version)."""

    absent: bool = False
    versions: frozenset[int] | None = None

    @classmethod
    def create(cls) -> Precondition:
        return cls(absent=True)

    @classmethod
    def match(cls, versions: frozenset[int] | None) -> Precondition:
        return cls(absent=False, versions=versions)

    def met_by(self, current: NameRecord | None) -> bool:
        if self.absent:
            return current is None
        return current is not None and (self.versions is None or current.version in self.versions)

    def check(self, current: NameRecord | None) -> None:
        if not self.met_by(current):
            raise NameConflict(self._explain(current), current=current)

    def _explain(self, current: NameRecord | None) -> str:
        if current is None:
            return "the name does not exist"
        if self.absent:
            return f"the name exists already, at version {current.version}"
        return f"the name is at version {current.version}"


class NameService:
    """Reads and compare-and-swap writes of names, each write recorded in the history."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, name: str) -> NameRecord:
        row = await self.db.fetchrow("get_name", validate_name(name))
        if row is None:
            raise NameNotFound(f"no name {name!r}")
        return NameRecord.from_row(row)

    async def put(
        self,
        name: str,
        digest: str,
        metadata: dict[str, Any] | None,
        expected: Precondition,
        actor: str,
    ) -> tuple[NameRecord, bool]:
        """Point ``name`` at ``digest`` if it is as ``expected``; return the record and whether
        the name was created. ``metadata`` None keeps the current metadata."""
        validate_name(name)
        parse_digest(digest)
        if metadata is not None:
            check_metadata(metadata)
        async with self.db.transaction() as tx:
            return await _write(tx, name, digest, metadata, expected, actor)

    async def promote(
        self,
        name: str,
        source: str,
        source_version: int | None,
        metadata: dict[str, Any] | None,
        expected: Precondition,
        actor: str,
    ) -> tuple[NameRecord, bool]:
        """Point ``name`` at what ``source`` points at (at ``source_version``, if given), in one
        compare-and-swap step that records the source and its version in the history.
        ``metadata`` None copies the source's metadata."""
        validate_name(name)
        validate_name(source)
        if metadata is not None:
            check_metadata(metadata)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("lock_source_name", source)
            if row is None:
                raise NameNotFound(f"no name {source!r} to promote")
            if source_version is not None and row["version"] != source_version:
                raise PreconditionFailed(
                    f"the source {source!r} is at version {row['version']}, not {source_version}"
                )
            copied = dict(row["metadata"]) if metadata is None else metadata
            origin = (source, row["version"])
            return await _write(tx, name, row["digest"], copied, expected, actor, origin)

    async def delete(
        self, name: str, expected: Precondition, actor: str, *, admin: bool = False
    ) -> int:
        """Delete ``name`` if it is as ``expected`` and no policy forbids it; return the version
        its deletion has. Only ``admin`` callers may delete protected names."""
        from casd.policies import NamePolicies

        validate_name(name)
        async with self.db.transaction() as tx:
            await tx.execute("lock_name_lifecycle", name_lock_key(name))
            current = await _lock_current(tx, name)
            expected.check(current)
            (await NamePolicies.read(tx, name)).check_delete(admin)
            version: int = await tx.fetchval("delete_name", name, actor)
        return version

    async def listing(
        self,
        prefix: str = "",
        after: str = "",
        limit: int = DEFAULT_PAGE,
        readable: tuple[str, ...] | None = None,
    ) -> tuple[list[NameRecord], str | None]:
        """A page of names that start with ``prefix``, in byte order after ``after``, and the
        name to continue after when more follow; only names under ``readable`` if given."""
        validate_name_part(prefix, "prefix")
        validate_name_part(after, "after")
        validate_page_size(limit)
        scope = None if readable is None else list(readable)
        rows = await self.db.fetch("list_names", prefix, after, limit + 1, scope)
        records = [NameRecord.from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return records, records[-1].name if more else None

    async def history(
        self, name: str, before: int | None = None, limit: int = DEFAULT_PAGE
    ) -> tuple[list[HistoryEntry], int | None]:
        """A page of the name's changes, newest first, below version ``before``, and the
        version to continue before when more follow."""
        validate_name(name)
        validate_page_size(limit)
        if before is not None and before < 1:
            raise InvalidRequest("before must be a positive version")
        bound = _NO_VERSION_LIMIT if before is None else min(before, _NO_VERSION_LIMIT)
        rows = await self.db.fetch("name_history", name, bound, limit + 1)
        if not rows and not await self.db.fetchval("name_ever_existed", name):
            raise NameNotFound(f"no name {name!r} has ever existed")
        entries = [HistoryEntry.from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return entries, entries[-1].version if more else None


async def _hold_blob(tx: Queries, digest: str) -> int:
    """Lock the blob against collection and quarantine until commit; return its size."""
    await tx.execute("lock_blob_shared", lock_key(digest))
    row = await tx.fetchrow("blob_for_name", digest)
    if row is None or row["status"] != "ok":
        state = "not stored" if row is None else row["status"]
        raise UnknownBlob(f"blob {digest} is {state}; a name can only point at a stored blob")
    size: int = row["size"]
    return size


async def _write(
    tx: Queries,
    name: str,
    digest: str,
    metadata: dict[str, Any] | None,
    expected: Precondition,
    actor: str,
    source: tuple[str, int] | None = None,
) -> tuple[NameRecord, bool]:
    """The compare-and-swap write of a name inside ``tx``, its policies checked."""
    from casd.policies import NamePolicies

    size = await _hold_blob(tx, digest)
    # Before the name's own locks, in prefix order: writers under one quota take turns.
    policies = await NamePolicies.lock(tx, name)
    if expected.absent:
        await tx.execute("lock_name_lifecycle", name_lock_key(name))
    current = await _lock_current(tx, name)
    expected.check(current)
    await policies.check_write(tx, current)
    await policies.check_quotas(tx, digest)
    source_name, source_version = source or (None, None)
    if current is None:
        row = await tx.fetchrow(
            "create_name", name, digest, metadata or {}, actor, source_name, source_version
        )
    else:
        row = await tx.fetchrow(
            "update_name",
            name,
            digest,
            metadata,
            actor,
            current.digest,
            source_name,
            source_version,
        )
    return NameRecord.from_row(row, size=size, healthy=True), current is None


async def _lock_current(tx: Queries, name: str) -> NameRecord | None:
    row = await tx.fetchrow("lock_name", name)
    return None if row is None else NameRecord.from_row(row)
