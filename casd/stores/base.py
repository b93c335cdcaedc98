"""The blob store contract: where the bytes live, and nothing else.

Every backend (:mod:`casd.stores.file`, the S3 store) fulfils :class:`BlobStore`; the rest of
casd never knows which one it has. The database decides *what* is stored (rows, locks, upload
state); the store only holds bytes, under three rules:

- **Verify before visible.** Bytes go to a private staging object, are made durable
  (:meth:`StagedBlob.finish`) and only then appear under their digest (:meth:`BlobStore.publish`),
  atomically.
- **Never replace.** :meth:`~BlobStore.publish` creates the blob or reports
  :attr:`Published.EXISTED`; it replaces stored bytes only when the caller says they are suspect
  (their row is quarantined or missing). Same-digest publishers are serialised in PostgreSQL
  (the publish lock of ``lock_and_upsert_blob``), so "exactly one creation" never rests on the
  backend's conditional writes alone; they only guard.
- **Async throughout.** No call blocks the event loop; listings are paged async iterators.

Errors: bytes that are not there raise :class:`FileNotFoundError` (on every read, also in the
middle of one); every other store failure is :class:`casd.errors.Unavailable`, or
:class:`casd.errors.InsufficientStorage` when the store is out of space or quota.

Departures from the study (``scale-out.md`` §5.2), and why:

- :meth:`~BlobStore.assemble` returns a *staged* blob that the caller publishes like any other,
  instead of publishing itself. The copy of a resumable upload's segments (seconds for large
  ones) then runs before the publish transaction, which holds the blob's locks only for the
  publish proper; and there is one publish path, with one crash-recovery story.
- :meth:`~BlobStore.open` is an async context manager around the reader (rather than a bare
  coroutine returning it): the reader holds a file or a connection, and ``async with`` closes
  it on every path, including a client that goes away in the middle.
- :meth:`~BlobStore.check` raises :class:`~casd.errors.Unavailable` when the store does not
  answer and returns :class:`Capabilities` otherwise; ``writable`` False is a *full* store
  (readiness "degraded": reads still work).
- Crash recovery of publications (:meth:`~BlobStore.unfinished_publications`) stays in the
  contract: the file store journals a publication until its row is committed, so a worker that
  restarts adopts at once what a crash left without its row. A store that keeps no journal
  returns none; the scrub adopts verified objects without rows either way.
- The segment listing is per upload and returns every segment at once: an upload has a few
  thousand segments at most (one per checkpoint, §5.4).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


class Published(enum.Enum):
    """What :meth:`BlobStore.publish` did."""

    CREATED = "created"  # our verified bytes are now the blob
    EXISTED = "existed"  # bytes were at the key already; ours were dropped (not verified by us)


class StagedBlob(Protocol):
    """Bytes being written: invisible to readers until published."""

    size: int  # bytes written so far

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        """Append ``data`` (bytes, or a sequence of them written in order), bounded memory."""
        ...

    async def finish(self, tail: Sequence[bytes] = ()) -> None:
        """Append ``tail``, then make every written byte durable: on return the store has
        acknowledged all of them (fsync; every part completed). Still invisible."""
        ...


class BlobReader(Protocol):
    """An opened blob: its whole size known before any byte is read."""

    size: int  # of the whole blob, whatever range is read

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The bytes of the range opened, in chunks (each seen by ``observe`` first)."""
        ...


class Segment(NamedTuple):
    """A durable piece of a resumable upload: ``name`` is ``"<epoch>.<serial>"``."""

    name: str
    size: int

    @property
    def epoch(self) -> int:
        return int(self.name.partition(".")[0])


def segment_name(epoch: int, serial: int) -> str:
    return f"{epoch}.{serial}"


def is_segment_name(name: str) -> bool:
    epoch, dot, serial = name.partition(".")
    return bool(dot) and epoch.isdigit() and serial.isdigit()


@dataclass(frozen=True)
class Capabilities:
    """What :meth:`BlobStore.check` found."""

    backend: str  # "file" or "s3", for logs and readiness
    writable: bool  # False: full (uploads are refused with 507, reads still work)
    conditional_create: bool  # the backend itself refuses to create over an existing key
    detail: str = ""  # what a human should know (which guard is used instead, ...)


@dataclass
class UnfinishedPublication:
    """A publication that a crash interrupted before its row was committed, held for whoever
    recovers it (see :meth:`BlobStore.unfinished_publications`)."""

    digest: str
    size: int
    handle: object  # the store's own record of it


class BlobStore(Protocol):
    # --- ingest ---------------------------------------------------------------------------
    def staging(
        self, expected: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[StagedBlob]:
        """A new private staging object, removed on exit unless it was published. ``expected``
        is the digest the bytes should have, when the client said (S3 stages at the final key);
        the caller still verifies it before publishing."""
        ...

    async def publish(
        self, staged: StagedBlob, digest: str, *, replace_suspect: bool = False
    ) -> Published:
        """Make finished, verified ``staged`` bytes visible as ``digest``.

        Never replaces bytes already there (:attr:`Published.EXISTED`, ours are dropped),
        unless ``replace_suspect``: the row says the stored bytes are quarantined or missing,
        ours are verified, so ours go in (:attr:`Published.CREATED`). Runs inside the caller's
        publish transaction, under the blob's shared lock and publish lock. A CREATED
        publication is journalled until :meth:`settle`."""
        ...

    async def settle(self, staged: StagedBlob) -> None:
        """The publication's row is committed: drop the journal entry and the staged name."""
        ...

    def assemble(
        self, upload_id: str, segments: Sequence[Segment], expected: str
    ) -> contextlib.AbstractAsyncContextManager[StagedBlob]:
        """A finished staged blob whose bytes are ``segments`` of the upload in order (the
        caller verified their hash is ``expected``), to publish like any other; the segments
        stay. Raises FileNotFoundError if a segment is gone or shorter than recorded."""
        ...

    # --- crash recovery of publications ----------------------------------------------------
    async def unfinished_publications(self) -> list[UnfinishedPublication]:
        """Publications whose publisher died before :meth:`settle`, locked for the caller
        until :meth:`release_publication` (none from a store that keeps no journal)."""
        ...

    async def is_published(self, publication: UnfinishedPublication) -> bool:
        """Whether the bytes under the publication's digest are the ones it published."""
        ...

    async def release_publication(self, publication: UnfinishedPublication, done: bool) -> None:
        """Unlock an unfinished publication; ``done``: it is resolved, forget it."""
        ...

    # --- reads -----------------------------------------------------------------------------
    def open(
        self,
        digest: str,
        start: int = 0,
        end: int | None = None,
        observe: Callable[[bytes], object] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[BlobReader]:
        """Open a blob for reading bytes ``start``..``end`` (exclusive; None: to its end); one
        operation, so the reader's size is known before any response header goes out.
        ``observe`` (a hasher's update) sees each chunk off the event loop before it is
        yielded. Raises FileNotFoundError on entry if the blob is not there."""
        ...

    async def stat(self, digest: str) -> int | None:
        """The stored size of a blob, None if it is not there."""
        ...

    # --- removal ---------------------------------------------------------------------------
    async def delete(self, digest: str) -> None:
        """Remove a blob's bytes; nothing happens if they are not there."""
        ...

    async def quarantine(self, digest: str) -> str | None:
        """Move a blob's bytes aside for inspection; where they went, None if not there."""
        ...

    def list_digests(self, after: str = "") -> AsyncIterator[list[str]]:
        """Every stored digest greater than ``after``, in key order (= digest order), in pages.
        Names under the blob prefix that are not digests are listed as they are: the caller
        decides what to do with foreign files."""
        ...

    # --- resumable uploads: segments, recorded by the caller in PostgreSQL ------------------
    def segment_writer(
        self, upload_id: str, name: str
    ) -> contextlib.AbstractAsyncContextManager[StagedBlob]:
        """A new segment ``name`` of an upload, durable once :meth:`StagedBlob.finish` returned;
        kept on exit (recorded or not: the caller records it, the sweep removes it otherwise).
        Raises FileExistsError if the segment exists: names are never reused."""
        ...

    def read_segments(self, upload_id: str, segments: Sequence[Segment]) -> AsyncIterator[bytes]:
        """The bytes of ``segments`` in order, exactly each one's recorded size (a writer that
        was superseded may have appended more). FileNotFoundError if one is gone or short."""
        ...

    async def delete_segments(self, upload_id: str, names: Sequence[str] | None = None) -> None:
        """Remove some segments of an upload (None: all of them, and the upload's place)."""
        ...

    def list_upload_ids(self) -> AsyncIterator[list[str]]:
        """Every upload id with segments stored, in pages."""
        ...

    async def list_segments(self, upload_id: str) -> list[Segment]:
        """The segments stored for an upload (sizes as stored), in name order."""
        ...

    # --- housekeeping ----------------------------------------------------------------------
    async def sweep_staging(self, older_than: float) -> int:
        """Remove staging objects whose writer died; how many. A live writer's staging is
        never removed: a store that can tell liveness (the file store: the writer's flock)
        removes every abandoned one, one that cannot (S3) those older than ``older_than``
        seconds, the longest a writer may live."""
        ...

    async def check(self) -> Capabilities:
        """Probe the store: raises :class:`~casd.errors.Unavailable` if it does not answer."""
        ...
