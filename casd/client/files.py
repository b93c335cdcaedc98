"""Local files and streams of the client: hashing, chunks to send (paced), and downloads into
partial files that a later run resumes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import blake3

from casd.client.errors import LocalFileError
from casd.errors import InvalidRequest, Unavailable
from casd.wire import DIGEST_PREFIX

T = TypeVar("T")
CHUNK = 1024 * 1024
# ``progress(done, total)`` is called as bytes go out or come in.
Progress = Callable[[int, int], None]


async def local(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on local files, in a thread; its OSError as :class:`LocalFileError`
    (so that no local failure passes for a network one)."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as error:
        raise LocalFileError(str(error)) from error


def hash_file(path: Path, progress: Progress | None = None) -> tuple[str, int]:
    """The digest and size of a file (blocking; every core helps)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    total = path.stat().st_size
    with path.open("rb") as file:
        while chunk := file.read(16 * CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if progress:
                progress(size, max(total, size))
    return DIGEST_PREFIX + hasher.hexdigest(), size


def hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    """The digest and size of what a stream holds (blocking)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    while chunk := stream.read(16 * CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return DIGEST_PREFIX + hasher.hexdigest(), size


class Throttle:
    """At most ``rate`` bytes a second, on average since the first byte (None: no limit)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self._start: float | None = None
        self._sent = 0

    async def pace(self, size: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self._sent += size
        ahead = self._start + self._sent / self.rate - now
        if ahead > 0:
            await asyncio.sleep(ahead)


async def file_chunks(
    path: Path,
    start: int,
    end: int,
    progress: Progress | None,
    throttle: Throttle | None = None,
) -> AsyncIterator[bytes]:
    """Bytes ``start``..``end`` of a file, reporting progress as they are handed out."""
    file = await local(lambda: path.open("rb"))
    try:
        await local(file.seek, start)
        position = start
        while position < end:
            chunk = await local(file.read, min(CHUNK, end - position))
            if not chunk:
                raise InvalidRequest(f"{path} shrank while it was being uploaded")
            if throttle:
                await throttle.pace(len(chunk))
            position += len(chunk)
            yield chunk
            if progress:
                progress(position, end)
    finally:
        file.close()


async def stream_chunks(
    stream: IO[bytes], hasher: Any, counted: list[int], throttle: Throttle | None = None
) -> AsyncIterator[bytes]:
    """What a stream (stdin) holds, hashed on the way; ``counted[0]`` is the bytes so far."""
    while chunk := await local(stream.read, CHUNK):
        await asyncio.to_thread(hasher.update, chunk)
        if throttle:
            await throttle.pace(len(chunk))
        counted[0] += len(chunk)
        yield chunk


async def buffers(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The response body in buffers of about CHUNK bytes (fewer thread hand-offs)."""
    parts: list[bytes] = []
    gathered = 0
    async for chunk in content.iter_any():
        parts.append(chunk)
        gathered += len(chunk)
        if gathered >= CHUNK:
            yield b"".join(parts)
            parts, gathered = [], 0
    if parts:
        yield b"".join(parts)


class Download:
    """Bytes being received into a file and hashed, resumable at their size (blocking methods).

    A file target fills a partial file that survives the process: a later download of the
    same digest hashes what it holds and asks for the rest with a ``Range``. A stream target
    (stdout) cannot take back what it wrote, so it only ever continues.
    """

    def __init__(self, file: IO[bytes], *, restartable: bool) -> None:
        self.file = file
        self.restartable = restartable
        self.hasher = blake3.blake3()
        self.size = 0
        self.total: int | None = None

    @classmethod
    def partial(cls, path: Path) -> Download | None:
        """The partial file at ``path``, opened and hashed so far; None if another process is
        filling it right now."""
        file = path.open("a+b")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return None
        download = cls(file, restartable=True)
        download.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)  # a big partial file
        file.seek(0)
        while chunk := file.read(16 * CHUNK):
            download.hasher.update(chunk)
            download.size += len(chunk)
        return download

    def begin(self, status: int, headers: Any) -> None:
        """Start or continue with an answer: a 206 continues at our size, a 200 starts over."""
        if status == 206 and headers.get("Content-Range", "").startswith(f"bytes {self.size}-"):
            self.total = int(headers["Content-Range"].rpartition("/")[2])
            return
        if self.size and not self.restartable:
            raise Unavailable("the server sent the whole blob again; it cannot be taken back")
        if self.size:
            self.reset()
        length = headers.get("Content-Length")
        self.total = int(length) if length is not None and length.isdigit() else None

    def reset(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher, self.size = blake3.blake3(), 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def finish(self) -> None:
        self.file.flush()
        with contextlib.suppress(OSError):  # a pipe cannot be fsynced
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + self.hasher.hexdigest()
