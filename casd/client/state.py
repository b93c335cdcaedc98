"""What the client remembers between runs: the uploads it has started, in the user's state
directory (``$XDG_STATE_HOME/casd`` or ``~/.local/state/casd``).

``casd put`` records an upload as soon as the server has created it (server, upload URL, and
the file's identity: path, size, mtime, inode, digest). A later run for the same file on the
same server finds the record and resumes from the offset the server reports; a finished,
expired or cancelled upload is forgotten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A record this old is of no use: servers expire idle uploads after a day by default.
KEEP_SECONDS = 7 * 86400


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "casd"


@dataclass(frozen=True)
class FileIdentity:
    """A file as a later run can recognise it unchanged."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        status = path.stat()
        return cls(str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ino)


@dataclass(frozen=True)
class UploadRecord:
    server: str
    upload_url: str
    file: FileIdentity
    digest: str
    started_at: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> UploadRecord:
        return cls(
            body["server"],
            body["upload_url"],
            FileIdentity(**body["file"]),
            body["digest"],
            body["started_at"],
        )


class UploadJournal:
    """One small JSON file per upload under ``<state>/uploads``, written atomically."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_dir() / "uploads"

    def _path(self, server: str, file: FileIdentity) -> Path:
        key = json.dumps([server, dataclasses.asdict(file)], sort_keys=True)
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def find(self, server: str, file: FileIdentity) -> UploadRecord | None:
        """The upload started earlier for this unchanged file on this server."""
        try:
            record = UploadRecord.from_dict(json.loads(self._path(server, file).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return record if (record.server, record.file) == (server, file) else None

    def remember(self, server: str, file: FileIdentity, upload_url: str, digest: str) -> None:
        self.prune()
        record = UploadRecord(server, upload_url, file, digest, time.time())
        target = self._path(server, file)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record.as_dict()))
        temporary.replace(target)

    def forget(self, server: str, file: FileIdentity) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(server, file).unlink()

    def records(self) -> Iterator[tuple[Path, UploadRecord]]:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                yield path, UploadRecord.from_dict(json.loads(path.read_text()))

    def prune(self, max_age: float = KEEP_SECONDS) -> None:
        """Forget records older than ``max_age`` (their file changed since, or the server has
        long expired the upload)."""
        for path, record in self.records():
            if record.started_at < time.time() - max_age:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def forget_url(self, upload_url: str) -> None:
        """Forget whatever record points at this upload (it was cancelled)."""
        for path, record in self.records():
            if record.upload_url == upload_url:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
