"""An async client for casd on aiohttp's client: blobs, resumable uploads, names.

::

    async with Client("http://127.0.0.1:8480", token) as casd:
        blob = await casd.put_file("disk.qcow2")
        await casd.tag("prod/disk.qcow2", blob.digest)
        await casd.get("prod/disk.qcow2", "copy.qcow2")

Small files go up in one ``PUT`` with ``Expect: 100-continue`` (nothing is sent when the blob
is stored already); large ones through a resumable upload that survives dropped connections
and server restarts, resuming from the offset the server reports; with an
:class:`~casd.client.state.UploadJournal`, a later process resumes it too. Downloads are hashed
while they are written to a partial file next to the target (named after the digest, kept when
the transfer breaks, resumed with ``Range`` by the next download), which becomes the target only
once verified. Retries back off, are announced to ``on_retry``, and never repeat what cannot
succeed (TLS failures, 4xx answers but 408 and 429).
Every failure raises a :class:`casd.errors.CasdError` subclass carrying the problem's ``code``
(``error.status`` is the HTTP status, ``error.extra`` the rest of the problem body, such as
``current`` for ``precondition-failed``).
"""

from __future__ import annotations

from casd.client.api import SMALL_FILE_LIMIT, Client
from casd.client.config import ClientConfig, Connection, connection
from casd.client.errors import LocalFileError, TlsFailure, UnexpectedAnswer, error_from_problem
from casd.client.files import Progress
from casd.client.records import HistoryEntry, NameRecord, StoredBlob, TokenInfo
from casd.client.retry import Retry, RetryNote
from casd.client.state import UploadJournal

__all__ = [
    "SMALL_FILE_LIMIT",
    "Client",
    "ClientConfig",
    "Connection",
    "HistoryEntry",
    "LocalFileError",
    "NameRecord",
    "Progress",
    "Retry",
    "RetryNote",
    "StoredBlob",
    "TlsFailure",
    "TokenInfo",
    "UnexpectedAnswer",
    "UploadJournal",
    "connection",
    "error_from_problem",
]
