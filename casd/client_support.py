"""What :mod:`casd.client` speaks in: records, typed errors from answers, retries, files."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import blake3

from casd import errors, wire
from casd.errors import (
    BlobNotFound,
    BlobQuarantined,
    CasdError,
    Forbidden,
    InvalidRequest,
    MismatchingUploadOffset,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from casd.wire import DIGEST_PREFIX

T = TypeVar("T")
CHUNK = 1024 * 1024
# ``progress(done, total)`` is called as bytes go out or come in.
Progress = Callable[[int, int], None]
# ``note(failures, attempts, delay, error)`` is called before each retry.
RetryNote = Callable[[int, int, float, CasdError], None]
# Answers worth retrying though they are 4xx: the server timed out waiting, or asks to slow down.
RETRYABLE_4XX = (408, 429)
MAX_RETRY_AFTER = 60.0


class LocalFileError(CasdError):
    """Reading or writing a local file (or stdout) failed: never the server's fault."""

    code, title = "local-file-error", "Local file error"


class TlsFailure(Unavailable):
    """TLS failed (a certificate, or https spoken to a plain HTTP port): never retried."""


_BY_CODE: dict[str, type[CasdError]] = {}
_STATUS_ERRORS: dict[int, type[CasdError]] = {
    401: Unauthorized,
    403: Forbidden,
    409: MismatchingUploadOffset,
    410: BlobQuarantined,
    413: PayloadTooLarge,
}
# Transport failures: the request may not have reached the server, or its answer was lost.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class StoredBlob:
    digest: str
    size: int
    created: bool = False  # newly stored by this call


class UnexpectedAnswer(CasdError):
    """The server's answer is not what the API defines (a member it must have is missing)."""

    code, title = "unexpected-answer", "Unexpected answer"


ShapeT = TypeVar("ShapeT", bound=wire.Shape)


def parsed(shape: type[ShapeT], body: Any) -> ShapeT:
    """``body`` as a record of the API; members it does not know are ignored."""
    try:
        return shape.from_json(body)
    except wire.WireError as error:
        raise UnexpectedAnswer(str(error)) from error


def stored(body: Any, status: int) -> StoredBlob:
    """The blob of a ``201`` (newly stored) or ``200`` answer of an upload."""
    blob = parsed(wire.Blob, body)
    return StoredBlob(blob.digest, blob.size, created=status == 201)


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter: ``attempts`` tries in a row that make no progress."""

    attempts: int = 8
    first_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)


def error_class(code: str) -> type[CasdError]:
    """The error class of a problem's code (:class:`CasdError` for a code it does not know: a
    newer server's), found among the classes of :mod:`casd.errors` that declare a code of the
    wire table, so that the client's reading of a code is the server's."""
    if not _BY_CODE:
        pending: list[type[CasdError]] = [CasdError]
        while pending:
            kind = pending.pop()
            pending += kind.__subclasses__()
            if kind.__module__ == errors.__name__ and "code" in kind.__dict__:
                _BY_CODE.setdefault(kind.code, kind)
    return _BY_CODE.get(code, CasdError)


def error_from_problem(
    status: int, body: Any, headers: dict[str, str], not_found: type[CasdError] = BlobNotFound
) -> CasdError:
    """The typed error for an error answer; one without a problem body (an answer to HEAD, a
    proxy's page) is typed by its status, ``not_found`` for 404."""
    kind: type[CasdError]
    error: CasdError
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        text = str(body)[:200] if body else ""
        kind = {404: not_found, **_STATUS_ERRORS}.get(status, InvalidRequest)
        if status >= 500 or status in RETRYABLE_4XX:
            kind = Unavailable
        error = kind(f"HTTP {status} {text}".strip(), headers=headers)
    else:
        # 408 and 429 (request-timeout, too-many-uploads) may succeed later: retried.
        kind = Unavailable if status in RETRYABLE_4XX else error_class(body["code"])
        extra = {key: value for key, value in body.items() if key not in wire.PROBLEM_MEMBERS}
        error = kind(str(body.get("detail") or ""), headers=headers, **extra)
        error.code = body["code"]
    error.status = status
    return error


async def raise_for_problem(
    response: aiohttp.ClientResponse, not_found: type[CasdError] = BlobNotFound
) -> None:
    """Raise the typed error of an error answer."""
    text = await response.text(errors="replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    raise error_from_problem(response.status, body, dict(response.headers), not_found)


def unreachable(url: str, error: BaseException) -> Unavailable:
    kind = TlsFailure if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError) else Unavailable
    return kind(f"cannot talk to casd at {url}: {type(error).__name__}: {error}".strip())


async def local(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on local files, in a thread; its OSError as :class:`LocalFileError`
    (so that no local failure passes for a network one)."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as error:
        raise LocalFileError(str(error)) from error


def retry_after(error: CasdError) -> float | None:
    """The seconds a ``Retry-After`` header asks for (capped), None without one."""
    raw = error.headers.get(wire.RETRY_AFTER, "").strip()
    return min(float(raw), MAX_RETRY_AFTER) if raw.isdigit() else None


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


def offset_header(error: CasdError) -> int | None:
    raw = error.headers.get(wire.UPLOAD_OFFSET, "")
    return int(raw) if raw.isdigit() else None


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
